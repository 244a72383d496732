"""Root pytest configuration: keep collection to the project's tests and modules."""

collect_ignore_glob = ["examples/*", "bench/*", "src/loopline/store/migrations/*"]
