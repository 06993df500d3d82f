//! The SOP method (docs/METHOD.md): memory banks (`bank`), self-organizing prototypes
//! (`prototypes`), the [CLS] and SOP-MIM losses on the GPU (`objective`), and the file
//! format that replays them (`objective_io`, `replay`); and the parametric baseline it is
//! compared with, iBOT's prototype layer, centring and losses (`ibot`); the per-step
//! diagnostics of collapse and crowding (`diagnostics`).

pub mod bank;
pub mod diagnostics;
pub mod ibot;
pub mod objective;
pub mod objective_io;
pub mod prototypes;
pub mod replay;
