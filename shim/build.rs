//! Link flags of containerd-shim-cryo-v2. Every container has a shim of its own, so what the
//! shim keeps resident counts per container.
//! - Packed relative relocations (DT_RELR, glibc 2.36+, binutils 2.38+) shrink the relocation
//!   table the loader reads at every start from ~600 KiB to a few KiB.
//! - A position-dependent executable (`-no-pie`), as Debian's Go-built runc shim is: the
//!   loader then writes nothing into the binary's ~400 KiB of vtables and other pointer
//!   tables (.data.rel.ro), so their pages stay clean pages of the file, shared by every shim
//!   instead of private to each (Private_Dirty 984 -> 620 KiB per shim). The price is that
//!   the shim's own code and data sit at a fixed address (its libraries, heap and stacks are
//!   still randomised).
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
