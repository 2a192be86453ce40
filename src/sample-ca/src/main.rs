//! `sample-ca DIR`: writes a fresh sample CA, the HTTPS listener's certificate
//! and the demo clients' certificates to DIR (see the library), and prints
//! each client's names and `x5t#S256`.

use anyhow::{bail, Result};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: sample-ca DIR   (writes ca.pem, server.pem/.key and the demo clients' .pem/.key)");
    };
    let dir = PathBuf::from(dir);
    let clients = tollgate_sample_ca::write_sample(&dir)?;
    println!(
        "sample CA, server and client certificates in {}",
        dir.display()
    );
    for (client, issued) in clients {
        println!(
            "  {}.pem  {}  {}  x5t#S256={}",
            client.file,
            client.uri_san,
            client.dns_san,
            issued.x5t_s256()
        );
    }
    Ok(())
}
