let
  sys = "x86_64-linux";
  dep = derivation {
    name = "dep";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "echo a > $out; echo b > $dev" ];
    outputs = [ "out" "dev" ];
  };
in {
  multi = derivation {
    name = "multi";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "echo \"quoted\\\\ \n tab\t cr\r\" > $out; touch $dev $doc" ];
    outputs = [ "out" "dev" "doc" ];
    weird = "back\\slash \"q\" nl\n tab\t cr\r dollar\${x} utf8 é ∀";
  };
  withDeps = derivation {
    name = "with-deps";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "cat ${dep} ${dep.dev} ${builtins.toFile "src.txt" "hello\n"} > $out" ];
  };
  fixed = derivation {
    name = "fixed";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "echo fixed > $out" ];
    outputHash = "sha256-LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=";
    outputHashAlgo = "sha256";
    outputHashMode = "recursive";
  };
  flat = derivation {
    name = "flat";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "printf x > $out" ];
    outputHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    outputHashAlgo = "sha256";
  };
  floating = derivation {
    name = "floating";
    system = sys;
    builder = "/bin/sh";
    args = [ "-c" "echo f > $out; echo g > $lib" ];
    outputs = [ "out" "lib" ];
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  };
}
