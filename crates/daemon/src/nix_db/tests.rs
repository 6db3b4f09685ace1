use super::*;

fn row(id: i64, path: &str, deriver: Option<&str>, ultimate: bool) -> ValidPathRow {
    ValidPathRow {
        id,
        path: format!("/nix/store/{path}"),
        registration_time: 0,
        deriver: deriver.map(|d| format!("/nix/store/{d}")),
        ultimate,
    }
}

const D1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm-a.drv";
const D2: &str = "0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-b.drv";

#[test]
fn outputs_of_one_derivation_make_one_request_with_its_derivation() {
    let rows = [
        row(1, "1c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-a", Some(D1), true),
        row(2, "2c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-a-dev", Some(D1), true),
        // Substituted: not built here.
        row(3, "3c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-s", Some(D2), false),
        // Added from a file: no deriver.
        row(4, "4c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-f", None, false),
        row(5, "5c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-b", Some(D2), true),
        // Not a store path of this store: never queued.
        ValidPathRow {
            path: "/elsewhere/6c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-x".into(),
            ..row(6, "", Some(D2), true)
        },
    ];
    let sd = StoreDir::default();
    let built = requests_for(&rows, NixDbPaths::Built, &sd);
    let p = |s: &str| format!("/nix/store/{s}");
    assert_eq!(
        built,
        [
            (
                Some(p(D1)),
                vec![
                    p("1c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-a"),
                    p("2c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-a-dev")
                ]
            ),
            (Some(p(D2)), vec![p("5c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-b")]),
        ]
    );
    let all = requests_for(&rows, NixDbPaths::All, &sd);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(
        all[2],
        (None, vec![p("4c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-f")])
    );
}
