# bench: benchmarks (not tests); run through `ddcl bench ...`.
