//! Evaluation of frozen features: extraction, weighted k-NN, and a linear probe.

pub mod features;
pub mod knn;
pub mod linear;
