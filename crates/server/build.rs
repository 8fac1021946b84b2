//! Builds the XDP fast path (xdp/relay.bpf.c) with clang when clang is there; without
//! it the server is built without the fast path and `--xdp` says so. (A C program built
//! with Debian's clang rather than Rust for BPF: that needs a nightly toolchain and
//! bpf-linker, which the registries here do not provide in a form CI can pin.)

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(firstcall_xdp)");
    println!("cargo::rerun-if-changed=xdp/relay.bpf.c");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("relay.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // <asm/types.h> lives under the host's multiarch directory on Debian.
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!("cargo::warning=no XDP fast path in this build (libbpf's headers, Debian's libbpf-dev, are missing); --xdp will be refused");
        return;
    }
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    if !multiarch.is_empty() {
        cmd.arg(format!("-I/usr/include/{multiarch}"));
    }
    cmd.arg("-c").arg("xdp/relay.bpf.c").arg("-o").arg(&out);
    match cmd.output() {
        Ok(o) if o.status.success() => println!("cargo::rustc-cfg=firstcall_xdp"),
        Ok(o) => {
            // A program that does not compile is a bug here, not a missing tool.
            panic!(
                "clang failed on xdp/relay.bpf.c:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Err(e) => println!("cargo::warning=no XDP fast path in this build ({clang}: {e}); --xdp will be refused"),
    }
}
