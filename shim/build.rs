//! Link flags of containerd-shim-cryo-v2. Every container has a shim of its own, so what the
//! shim keeps resident counts per container. Packed relative relocations (DT_RELR, glibc
//! 2.36+, binutils 2.38+) shrink the relocation table the loader reads at every start from
//! ~600 KiB to a few KiB.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
