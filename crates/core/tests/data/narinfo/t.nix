let
  dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "export PATH=/usr/bin:/bin; echo dep > $out"]; };
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh"; outputs = ["out" "dev"];
    args = ["-c" "export PATH=/usr/bin:/bin; mkdir -p $out/bin; echo ${dep} > $out/bin/x; chmod +x $out/bin/x; ln -s $out $out/self; echo $out > $dev"]; }
