//! `tollgate-token-service`: see the library's documentation.

fn main() -> std::process::ExitCode {
    tollgate_token_service::cli::main()
}
