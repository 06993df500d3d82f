//! The `sop` command line: one subcommand per file under `src/cli/`.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = sop::cli::Cli::parse();
    // Started by mpirun/srun: join the run's ranks first, so that any later error stops them all.
    if sop::dist::launched_by_mpi() {
        sop::dist::world();
    }
    if let Err(e) = sop::cli::run(cli) {
        // One rank of data-parallel training that fails stops every rank (MPI_Abort), naming
        // itself and its error; alone, it just exits.
        sop::dist::world_if_started().inspect(|d| d.abort(&format!("{e:#}")));
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    if let Some(d) = sop::dist::world_if_started() {
        d.finish();
    }
}
