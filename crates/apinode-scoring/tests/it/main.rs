//! Integration tests of apinode-scoring: the differential test against dataiku-scoring on
//! generated models (`differential.rs`), and load and input errors on small hand-written models
//! (`errors.rs`, built by `fixture.rs`).

mod differential;
mod errors;
mod fixture;
