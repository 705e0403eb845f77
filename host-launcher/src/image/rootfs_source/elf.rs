//! The one thing read from ELF files: the program interpreter (`PT_INTERP`), from the
//! header and program headers only, never the whole file.

use std::path::Path;

/// The interpreter a little-endian ELF64 file asks for; `None` for anything else (not
/// ELF, another class, statically linked) or when the headers do not add up.
pub(crate) fn interpreter(path: &Path) -> Option<String> {
    airlock_proto::program_interpreter::program_interpreter(path)
}

/// A minimal ELF64 executable asking for `interp` (for tests).
#[cfg(test)]
pub(crate) fn fake_dynamic_elf(interp: &str) -> Vec<u8> {
    airlock_proto::program_interpreter::minimal_elf(Some(interp))
}
