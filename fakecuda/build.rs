//! Gives the fake driver the real driver's soname, so that a process that dlopens
//! `libcuda.so.1` (cudarc, cryo) and one that finds it already loaded agree on the name.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}
