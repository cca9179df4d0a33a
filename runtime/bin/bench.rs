//! `miad bench`: placeholder until its issue lands (owner replaces this file).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> miad::Result<()> {
    Err(miad::Error::Config("`miad bench` is not built yet".into()))
}
