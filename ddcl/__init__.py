"""`ddcl`, the command: one subcommand per thing a user does. cli.py assembles the parser;
run.py runs a simulation, operate.py works on a running one, learn.py trains, measure.py
benchmarks; options.py holds what they share. The package sits above agents/ and bench/,
which never import it."""
