//! The stock `stateline` binary: the command-line tool with no registered entity types (see
//! `stateline::cli` to build one that knows an application's types).

fn main() {
    std::process::exit(stateline::cli::Cli::new().run());
}
