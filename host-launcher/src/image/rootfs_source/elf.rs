//! The one thing read from ELF files: the program interpreter (`PT_INTERP`), from the
//! header and program headers only, never the whole file.

use std::path::Path;

#[cfg(test)]
const PT_INTERP: u32 = 3;

/// The interpreter a little-endian ELF64 file asks for; `None` for anything else (not
/// ELF, another class, statically linked) or when the headers do not add up.
pub(crate) fn interpreter(path: &Path) -> Option<String> {
    airlock_proto::program_interpreter::program_interpreter(path)
}

/// A minimal ELF64 executable asking for `interp` (for tests).
#[cfg(test)]
pub(crate) fn fake_dynamic_elf(interp: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELF64
    b[5] = 1; // little-endian
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let at = b.len() as u64;
    let p = 64;
    b[p..p + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
    b[p + 8..p + 16].copy_from_slice(&at.to_le_bytes()); // p_offset
    b[p + 32..p + 40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes()); // p_filesz
    b.extend_from_slice(interp.as_bytes());
    b.push(0);
    b
}
