//! A throwaway certificate authority made with `openssl` for one test: a CA,
//! a server certificate for 127.0.0.1/localhost and a client certificate, all
//! signed by it, in the test's own directory. Nothing is trusted system-wide.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PEM files of a CA and the two certificates it signed.
#[derive(Clone, Debug)]
pub struct ThrowawayCa {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (make test installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ThrowawayCa {
    /// Makes the CA and both certificates in `dir` (P-256 keys, valid two days).
    pub fn make(dir: &Path) -> Self {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tidemark-test-ca",
        ]);
        openssl(dir, &ca_args);
        let exts = [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
            ),
        ];
        for (name, ext) in exts {
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
            let (key, csr, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("/CN=tidemark-test-{name}"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &req);
            let extfile = format!("{name}.ext");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
            );
        }
        ThrowawayCa {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}
