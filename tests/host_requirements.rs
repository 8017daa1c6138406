//! What the binary needs of the host it is copied to (README "Install as a service"): no
//! shared library but glibc's (`libc.so.6`, the loader `ld-linux-x86-64.so.2`, which every
//! glibc host has) and GCC's unwinder `libgcc_s.so.1`, and no glibc symbol version
//! newer than 2.34 (Debian 12, Ubuntu 22.04, RHEL 9). Read from the ELF dynamic section and
//! version-needs table of the binary the tests built; the dist profile links the same code with
//! LTO, which can drop references but not add them; `MEC_PLUGIN_BIN=target/dist/mec-plugin`
//! reads that one instead (`.ci/run` does).

/// The binary the tests built, or `MEC_PLUGIN_BIN`.
fn binary() -> String {
    std::env::var("MEC_PLUGIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mec-plugin").into())
}

/// The shared libraries the binary may name (`DT_NEEDED`).
const ALLOWED_LIBRARIES: &[&str] = &["libc.so.6", "ld-linux-x86-64.so.2", "libgcc_s.so.1"];

/// The libraries of glibc itself, whose symbol versions are glibc releases.
const GLIBC_LIBRARIES: &[&str] = &["libc.so.6", "ld-linux-x86-64.so.2"];

/// The newest glibc symbol version the binary may need, as (major, minor).
const NEWEST_GLIBC: (u32, u32) = (2, 34);

#[test]
fn the_binary_links_only_glibc() {
    let elf = Elf::read(&binary());
    let needed = elf.needed_libraries();
    assert!(
        needed.iter().any(|name| name == "libc.so.6"),
        "no libc.so.6 among the needed libraries {needed:?}: a statically linked build \
         (README names the shared libraries it links), or the reader found nothing"
    );
    let other: Vec<&String> = needed
        .iter()
        .filter(|name| !ALLOWED_LIBRARIES.contains(&name.as_str()))
        .collect();
    assert!(
        other.is_empty(),
        "the binary needs {other:?} besides {ALLOWED_LIBRARIES:?}: deployed as a single file, it \
         would not start on a host without them (README, Install as a service)"
    );
}

#[test]
fn the_binary_needs_no_glibc_newer_than_2_34() {
    let elf = Elf::read(&binary());
    let versions: Vec<String> = GLIBC_LIBRARIES
        .iter()
        .flat_map(|library| elf.needed_versions(library))
        .collect();
    assert!(
        versions.iter().any(|v| v.starts_with("GLIBC_2.")),
        "no GLIBC_2.x version needed of {GLIBC_LIBRARIES:?} ({versions:?}): the reader found \
         nothing"
    );
    let too_new: Vec<&String> = versions
        .iter()
        .filter(|v| glibc_version(v).is_none_or(|found| found > NEWEST_GLIBC))
        .collect();
    assert!(
        too_new.is_empty(),
        "the binary needs {too_new:?} of glibc: it would no longer start on glibc {}.{} \
         (Ubuntu 22.04 has 2.35, RHEL 9 2.34), which README promises",
        NEWEST_GLIBC.0,
        NEWEST_GLIBC.1
    );
}

#[test]
fn glibc_versions_are_read_as_numbers() {
    assert_eq!(glibc_version("GLIBC_2.34"), Some((2, 34)));
    assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
    assert!(glibc_version("GLIBC_2.36").unwrap() > NEWEST_GLIBC);
    assert!(glibc_version("GLIBC_2.4").unwrap() < NEWEST_GLIBC);
    // RELR (`-z pack-relative-relocs`) adds this one: not a release, so refused.
    assert_eq!(glibc_version("GLIBC_ABI_DT_RELR"), None);
    assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
}

/// "GLIBC_2.34" → (2, 34); "GLIBC_2.2.5" → (2, 2); anything else → None.
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.strip_prefix("GLIBC_")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The parts of a little-endian ELF64 file these tests read, through its section headers.
struct Elf {
    bytes: Vec<u8>,
    sections: Vec<Section>,
}

struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
    info: usize,
}

const SHT_DYNAMIC: u32 = 6;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const DT_NEEDED: u64 = 1;

impl Elf {
    fn read(path: &str) -> Elf {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        assert!(
            bytes.starts_with(b"\x7fELF") && bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
            "{path} is not a little-endian ELF64 file"
        );
        let mut elf = Elf {
            bytes,
            sections: Vec::new(),
        };
        let table = elf.u64(0x28) as usize;
        let entry = elf.u16(0x3a) as usize;
        let count = elf.u16(0x3c) as usize;
        elf.sections = (0..count)
            .map(|i| {
                let at = table + i * entry;
                Section {
                    kind: elf.u32(at + 4),
                    offset: elf.u64(at + 24) as usize,
                    size: elf.u64(at + 32) as usize,
                    link: elf.u32(at + 40) as usize,
                    info: elf.u32(at + 44) as usize,
                }
            })
            .collect();
        elf
    }

    /// The `DT_NEEDED` names of the dynamic section.
    fn needed_libraries(&self) -> Vec<String> {
        let mut names = Vec::new();
        for section in self.sections.iter().filter(|s| s.kind == SHT_DYNAMIC) {
            for at in (section.offset..section.offset + section.size).step_by(16) {
                if self.u64(at) == DT_NEEDED {
                    names.push(self.string(section.link, self.u64(at + 8) as usize));
                }
            }
        }
        names
    }

    /// The version names needed of `library` (the `Vernaux` entries of its `Verneed`).
    fn needed_versions(&self, library: &str) -> Vec<String> {
        let mut versions = Vec::new();
        for section in self.sections.iter().filter(|s| s.kind == SHT_GNU_VERNEED) {
            let mut need = section.offset;
            for _ in 0..section.info {
                let file = self.string(section.link, self.u32(need + 4) as usize);
                let mut aux = need + self.u32(need + 8) as usize;
                for _ in 0..self.u16(need + 2) {
                    if file == library {
                        versions.push(self.string(section.link, self.u32(aux + 8) as usize));
                    }
                    aux += self.u32(aux + 12) as usize;
                }
                need += self.u32(need + 12) as usize;
            }
        }
        versions
    }

    /// The NUL-terminated string at `offset` of the string table in section `table`.
    fn string(&self, table: usize, offset: usize) -> String {
        let start = self.sections[table].offset + offset;
        let end = start
            + self.bytes[start..]
                .iter()
                .position(|&b| b == 0)
                .expect("unterminated string in the ELF string table");
        String::from_utf8_lossy(&self.bytes[start..end]).into_owned()
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.bytes[at..at + 2].try_into().unwrap())
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap())
    }
}
