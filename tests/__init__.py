"""The test suite, arranged by the room each test file tests (README "The data flow"):

    operators/  pipelines/  model/  jobs/   one folder per production room (manifests/ has no suite of its own:
                                            its readers and drop list are tested through the audit, operators/)
    scenarios/  end-to-end suites across rooms: fault injection, crash safety, hostile writes, demo safety, shipped
                configs and the demo, redaction, the reference rules (conformance), the house layout
    fuzz/       property-based (hypothesis) suites of hostile input, one per reader

Shared helpers stay here at the top (`tests.faults`, `tests.bounds`, `tests.s3_server`, `tests.multinode`,
`tests.slow_import`; Ray workers unpickle hooks from `tests.faults`), with conftest.py (its fixtures apply to every
folder), fixtures/ and the two cluster suites (test_multinode.py, test_cluster.py: a Ray cluster on this machine).
This file makes `tests` a package, so pytest imports each file as `tests.<room>.test_x`, the name other test files
import it by (and Ray workers unpickle a test's functions by).
"""
