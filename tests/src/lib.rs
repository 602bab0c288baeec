//! Integration tests of datalayer; the tests live in `tests/`.
