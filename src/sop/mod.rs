//! The SOP method: memory banks, self-organizing prototypes, and the objective.

pub mod bank;
pub mod objective;
pub mod objective_io;
pub mod prototypes;
pub mod replay;
