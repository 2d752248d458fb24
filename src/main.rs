fn main() -> std::process::ExitCode {
    syscont::cli::main()
}
