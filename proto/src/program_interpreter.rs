//! The program interpreter (`PT_INTERP`: the dynamic loader) an ELF executable asks
//! for, read from its header and program headers only. The image builder checks with
//! it that a rootfs has the loader its tools need; the enforcer checks again, at boot,
//! for the tools a manifest grants, so a missing loader is refused naming it rather
//! than failing later as a confusing "No such file or directory" on a file that exists.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const PT_INTERP: u32 = 3;
/// Real executables have a dozen program headers; a header claiming this many bytes
/// of them is not one.
const MAX_PROGRAM_HEADER_BYTES: usize = 64 << 10;
/// The longest interpreter path read.
const MAX_INTERPRETER_BYTES: u64 = 4096;

/// What an executable's headers say about its loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramInterpreter {
    /// Not a little-endian ELF64 file (a script, another class), or headers that do
    /// not add up.
    NotElf64,
    /// Statically linked: no `PT_INTERP`.
    Static,
    /// Dynamically linked against this loader.
    Dynamic(String),
}

/// Reads the headers of the ELF file in `f`.
pub fn program_interpreter_of(mut f: impl Read + Seek) -> std::io::Result<ProgramInterpreter> {
    let mut h = [0u8; 64];
    if f.read_exact(&mut h).is_err() || &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Ok(ProgramInterpreter::NotElf64);
    }
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36), u16_at(&h, 0x38));
    if phentsize < 56 || phentsize * phnum > MAX_PROGRAM_HEADER_BYTES {
        return Ok(ProgramInterpreter::NotElf64);
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    if f.read_exact(&mut ph).is_err() {
        return Ok(ProgramInterpreter::NotElf64);
    }
    let Some(header) = ph
        .chunks_exact(phentsize)
        .find(|p| u32::from_le_bytes(p[..4].try_into().expect("4")) == PT_INTERP)
    else {
        return Ok(ProgramInterpreter::Static);
    };
    let (offset, filesz) = (u64_at(header, 8), u64_at(header, 32));
    if filesz == 0 || filesz > MAX_INTERPRETER_BYTES {
        return Ok(ProgramInterpreter::NotElf64);
    }
    let mut name = vec![0u8; filesz as usize];
    f.seek(SeekFrom::Start(offset))?;
    if f.read_exact(&mut name).is_err() {
        return Ok(ProgramInterpreter::NotElf64);
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match String::from_utf8(name[..end].to_vec()) {
        Ok(s) if !s.is_empty() => Ok(ProgramInterpreter::Dynamic(s)),
        _ => Ok(ProgramInterpreter::NotElf64),
    }
}

/// The loader the ELF executable at `path` asks for, if it is one that asks.
pub fn program_interpreter(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    match program_interpreter_of(std::io::BufReader::new(f)) {
        Ok(ProgramInterpreter::Dynamic(loader)) => Some(loader),
        _ => None,
    }
}

/// The smallest ELF64 executable header that asks for `loader` (`PT_INTERP`), or is
/// statically linked (`None`): for the tests of every loader check (builder, rootfs
/// checks, enforcer), which must see real headers, not a mock.
pub fn minimal_elf(loader: Option<&str>) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELF64
    b[5] = 1; // little-endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
                                                        // PT_LOAD when static; PT_INTERP pointing just past the headers otherwise.
    let kind: u32 = if loader.is_some() { PT_INTERP } else { 1 };
    b[64..68].copy_from_slice(&kind.to_le_bytes());
    if let Some(l) = loader {
        let at = b.len() as u64;
        b[64 + 8..64 + 16].copy_from_slice(&at.to_le_bytes()); // p_offset
        b[64 + 32..64 + 40].copy_from_slice(&(l.len() as u64 + 1).to_le_bytes()); // p_filesz
        b.extend_from_slice(l.as_bytes());
        b.push(0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    use super::minimal_elf as elf;

    #[test]
    fn the_loader_of_a_dynamic_executable_is_read_and_a_static_one_has_none() {
        let read = |b: Vec<u8>| program_interpreter_of(Cursor::new(b)).unwrap();
        assert_eq!(
            read(elf(Some("/lib64/ld-linux-x86-64.so.2"))),
            ProgramInterpreter::Dynamic("/lib64/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(read(elf(None)), ProgramInterpreter::Static);
        assert_eq!(read(b"#!/bin/sh\n".to_vec()), ProgramInterpreter::NotElf64);
        // Headers pointing outside the file, or an absurd count, are not an executable.
        let mut truncated = elf(Some("/lib/ld.so"));
        truncated.truncate(100);
        assert_eq!(read(truncated), ProgramInterpreter::NotElf64);
        let mut huge = elf(None);
        huge[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(read(huge), ProgramInterpreter::NotElf64);
    }

    #[test]
    fn the_hosts_own_true_is_dynamic_or_static_never_unreadable() {
        let f = std::fs::File::open("/bin/true").unwrap();
        assert_ne!(
            program_interpreter_of(f).unwrap(),
            ProgramInterpreter::NotElf64
        );
    }
}
