//! The `stateline` command-line tool as a library: inspect, replay, verify and maintain
//! journals. The stock binary (`cargo install --path .`, then `stateline --help`) runs
//! [`Cli::new`] with no entity types; an application builds its own small binary that
//! registers its entity types, so that `replay` shows typed states, `diff` compares them and
//! `verify` checks that every stored event decodes as its type.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use stateline::prelude::*;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Account { balance: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Event { Deposited { amount: i64 } }
//!
//! impl EventSourced for Account {
//!     const TYPE_NAME: &'static str = "account";
//!     type Command = ();
//!     type Event = Event;
//!     type Reply = ();
//!     fn handle(&self, _: ()) -> Effect<Self> { Effect::reply(()) }
//!     fn apply(&mut self, e: &Event) {
//!         match e { Event::Deposited { amount } => self.balance += amount }
//!     }
//! }
//!
//! // src/bin/bank-cli.rs: `bank-cli replay bank.redb account acc-1 --to-seq 10`
//! fn main() {
//!     let code = stateline::cli::Cli::new().register::<Account>().run();
//!     std::process::exit(code);
//! }
//! ```
//!
//! Exit codes: [`EXIT_OK`], [`EXIT_ERROR`] (usage, I/O, not a journal, locked),
//! [`EXIT_CORRUPTED`] (corruption or failed verification), [`EXIT_NEWER_FORMAT`]. Every
//! error is one line on stderr naming the file.

mod args;
mod commands;
mod error;
mod jsondiff;
mod output;
mod payload;
mod progress;
mod registry;
mod table;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use clap::error::ErrorKind;
use clap::Parser;
use stateline_actors::EventSourced;

pub use error::{EXIT_CORRUPTED, EXIT_ERROR, EXIT_NEWER_FORMAT, EXIT_OK};

use args::{Args, Command};
use error::CliError;
use output::Out;
use registry::Registry;

/// The `stateline` command-line tool, with the entity types it knows. Register types with
/// [`Cli::register`] and run it with [`Cli::run`] from a `main` (see the module docs).
#[derive(Default)]
pub struct Cli {
    registry: Registry,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("types", &self.registry.names().collect::<Vec<_>>())
            .finish()
    }
}

/// What a command sees: output, format, registered types, whether to draw progress.
pub(crate) struct Ctx<'a> {
    /// `--json`.
    pub json: bool,
    /// Standard output.
    pub out: Out<'a>,
    /// Registered entity types.
    pub registry: &'a Registry,
    /// Draw progress bars (stderr is a terminal).
    pub progress: bool,
    /// `out` is the process's standard output, so a command that waits (`changelog --follow`)
    /// can ask whether its reader went away ([`output::stdout_reader_gone`]).
    pub process_stdout: bool,
}

impl Cli {
    /// A CLI that knows no entity types (what the stock `stateline` binary runs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers entity type `S`: `replay` decodes its snapshots and applies its events with
    /// `S`'s own code and prints the state as JSON (through `S`'s `Serialize`), `diff` compares
    /// two such states, and `verify` checks that every stored event of type `S::TYPE_NAME`
    /// decodes through [`EventSourced::upcast`] and every snapshot of version
    /// `S::SNAPSHOT_VERSION` decodes as `S`. Registering a second type with the same
    /// `TYPE_NAME` replaces the first.
    pub fn register<S: EventSourced>(mut self) -> Self {
        self.registry.register::<S>();
        self
    }

    /// Parses the process arguments, runs the command on stdout/stderr and returns the exit
    /// code (pass it to [`std::process::exit`]). A panic anywhere is reported as one line on
    /// stderr with exit code [`EXIT_ERROR`], never as a backtrace.
    pub fn run(self) -> i32 {
        std::panic::set_hook(Box::new(|_| {}));
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        // Not locked for the whole run: progress bars draw on stderr from their own thread.
        let mut err = std::io::stderr();
        self.run_on(std::env::args_os(), &mut out, &mut err, true)
    }

    /// Runs the command line `args` (the first item is the program name) writing to `stdout`
    /// and `stderr`, and returns the exit code. For embedding and tests; progress bars still
    /// go to the process's stderr when it is a terminal.
    pub fn run_with<I, T>(self, args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        self.run_on(args, stdout, stderr, false)
    }

    fn run_on<I, T>(
        self,
        args: I,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        process_stdout: bool,
    ) -> i32
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.dispatch(args, stdout, process_stdout)
        }));
        let err = match result {
            Ok(Ok(())) => return EXIT_OK,
            Ok(Err(e)) => e,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                CliError::usage(format!("internal error: {msg}"))
            }
        };
        if !err.message.is_empty() {
            let _ = writeln!(stderr, "error: {}", err.message);
            let _ = stderr.flush();
        }
        err.code
    }

    fn dispatch<I, T>(
        &self,
        args: I,
        stdout: &mut dyn Write,
        process_stdout: bool,
    ) -> Result<(), CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = match Args::try_parse_from(args) {
            Ok(a) => a,
            Err(e) => return usage(e, stdout),
        };
        let mut ctx = Ctx {
            json: args.json,
            out: Out::new(stdout),
            registry: &self.registry,
            progress: std::io::stderr().is_terminal(),
            process_stdout,
        };
        let r = match &args.command {
            Command::Info(a) => commands::info::run(&mut ctx, a),
            Command::Ls(a) => commands::ls::run(&mut ctx, a),
            Command::Stats(a) => commands::stats::run(&mut ctx, a),
            Command::Events(a) => commands::events::run(&mut ctx, a),
            Command::Changelog(a) => commands::changelog::run(&mut ctx, a),
            Command::Replay(a) => commands::replay::run(&mut ctx, a),
            Command::Diff(a) => commands::diff::run(&mut ctx, a),
            Command::Verify(a) => commands::verify::run(&mut ctx, a),
            Command::Export(a) => commands::export::run(&mut ctx, a),
            Command::Import(a) => commands::import::run(&mut ctx, a),
            Command::Retain(a) => commands::retain::run(&mut ctx, a),
            Command::Compact(a) => commands::compact::run(&mut ctx, a),
        };
        // Whatever was printed before an error still reaches stdout.
        let flushed = ctx.out.flush();
        r.and(flushed)
    }
}

/// Help and version go to stdout (exit 0); usage errors become one line (exit 1).
fn usage(e: clap::Error, stdout: &mut dyn Write) -> Result<(), CliError> {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let mut out = Out::new(stdout);
            out.line(e.render().to_string().trim_end())?;
            out.flush()
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Err(CliError::usage(
            "no command given (see --help for the commands and examples)",
        )),
        _ => {
            let text = e.render().to_string();
            let text = text.split("\nUsage:").next().unwrap_or(&text);
            let mut line = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect::<Vec<_>>()
                .join(" ");
            if line.is_empty() {
                line = "missing command".into();
            }
            let line = line.strip_prefix("error: ").unwrap_or(&line).to_string();
            Err(CliError::usage(format!("{line} (see --help)")))
        }
    }
}
