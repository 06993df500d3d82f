//! The SOP objective: memory banks, self-organizing prototypes, the [CLS] and SOP-MIM
//! losses (../shared/SOP.md), and the file format that replays them (`objective_io`).

pub mod objective_io;
