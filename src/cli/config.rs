//! `sop config`: the fully resolved training configuration (recipe, then `--config`, then
//! `--set`, then the single flags) as TOML: exactly what `sop train` with the same flags
//! trains with and saves as the run folder's config.toml.

use super::settings::SettingArgs;
use super::AdapterArg;

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Used only by `--batch-size auto` (the batch is chosen against this adapter's memory).
    #[command(flatten)]
    pub adapter: AdapterArg,
    #[command(flatten)]
    pub settings: SettingArgs,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let mut cfg = args.settings.resolve()?;
    if args.settings.auto_batch() {
        let gpu = args.adapter.gpu()?;
        crate::train::memory::auto_batch(&gpu, &mut cfg)?;
    }
    cfg.validate()?;
    print!("{}", cfg.to_toml());
    Ok(())
}
