//! The SOP method (docs/METHOD.md): memory banks (`bank`), self-organizing prototypes
//! (`prototypes`), the [CLS] and SOP-MIM losses on the GPU (`objective`), and the file
//! format that replays them (`objective_io`, `replay`); and the parametric baseline it is
//! compared with, iBOT's prototype layer, centring and losses (`ibot`).

pub mod bank;
pub mod ibot;
pub mod objective;
pub mod objective_io;
pub mod prototypes;
pub mod replay;
