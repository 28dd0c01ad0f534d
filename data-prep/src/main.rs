use clap::Parser;
use data_prep::Outcome;

/// Prepare the IMDb splits: sample train, split test into validation and test.
#[derive(Parser)]
#[command(
    name = "data-prep",
    version,
    long_about = "Prepare the IMDb splits → <artifacts>/data/{train,validation,test}.parquet, \
summary.json and stamp.json.

Reads `data.source`: a Hugging Face dataset id (default stanfordnlp/imdb, through the HF cache \
at $HF_HOME; HF_HUB_OFFLINE=1 never downloads), a local folder of {train,test}-*.parquet \
(or plain_text/ inside it), an aclImdb/ folder or aclImdb_v1.tar.gz. Samples \
`data.train_fraction` of train and splits the shuffled test into validation \
(`data.validation_fraction`) and test, all seeded by `seed`; `data.stratify` keeps the label \
balance exact and `data.max_*` cap the splits for smoke runs.

Does nothing when the outputs already match the config and the source (unless --force)."
)]
struct Args {
    #[command(flatten)]
    common: pipeline::cli::ConfigArgs,
}

fn main() {
    let args = Args::parse();
    pipeline::cli::run_stage("data-prep", || {
        let Some(config) = args.common.load()? else {
            return Ok(());
        };
        match data_prep::run(&config, args.common.force)? {
            Outcome::UpToDate { dir } => println!("data-prep: up to date ({})", dir.display()),
            Outcome::Written { dir, summary } => print!("{}", data_prep::report(&dir, &summary)),
        }
        Ok(())
    });
}
