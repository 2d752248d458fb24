fn main() -> std::process::ExitCode {
    syscont::cli::init_logging();
    match syscont::cli::run(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(syscont::error::exit_code(&e))
        }
    }
}
