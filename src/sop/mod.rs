//! The SOP method (docs/METHOD.md): memory banks (`bank`), self-organizing prototypes
//! (`prototypes`), the [CLS] and SOP-MIM losses on the GPU (`objective`), and the file
//! format that replays them (`objective_io`, `replay`).

pub mod bank;
pub mod objective;
pub mod objective_io;
pub mod prototypes;
pub mod replay;
