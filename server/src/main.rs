//! securechat-server: the HTTPS chat server (see `--help`).

fn main() {
    eprintln!("securechat-server: not built yet (issue 2/8)");
    std::process::exit(2);
}
