//! `cargo bench [-- FILTER]`: the same validate-then-time harness as `sop bench`.

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("{e}"));
    let adapter = gpu.adapter_name();
    println!("adapter: {adapter}\n{}", sop::bench::TABLE_HEADER);
    let opts = sop::bench::Options { filter, ..Default::default() };
    let results =
        sop::bench::run(&gpu, &opts, |m| println!("{}", sop::bench::table_row(m))).unwrap_or_else(|e| panic!("{e}"));
    for line in sop::bench::ratios(&results) {
        println!("{line}");
    }
}
