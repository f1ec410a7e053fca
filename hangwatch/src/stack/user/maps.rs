//! `/proc/PID/maps`: where each module of a process is mapped, and where its stacks are.
use std::{fs, io};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Device and inode: what identifies the file, inside containers too.
    pub dev: String,
    pub inode: u64,
    /// The file path, or a pseudo-name such as `[vdso]` or `[stack]`; empty when anonymous.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// A mapping of a file, as opposed to anonymous memory or a pseudo-mapping.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file mapped, by device and inode.
    pub fn file_id(&self) -> crate::meta::reader::FileId {
        crate::meta::reader::FileId {
            dev: self.dev.clone(),
            inode: self.inode,
        }
    }
}

pub fn read(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_owned(),
        inode: inode.parse().ok()?,
        path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_pseudo_mappings_and_deleted_files() {
        let maps = parse(
            "5581a000-5581b000 r-xp 00001000 fd:01 1234 /usr/bin/cat\n\
             7ffd1000-7ffd3000 rw-p 00000000 00:00 0 [stack]\n\
             7ffd5000-7ffd7000 r-xp 00000000 00:00 0 [vdso]\n\
             7f000000-7f001000 r-xp 00002000 fd:01 99 /tmp/a b (deleted)\n",
        );
        assert_eq!(maps.len(), 4);
        assert!(maps[0].executable && maps[0].is_file());
        assert_eq!((maps[0].start, maps[0].offset), (0x5581a000, 0x1000));
        assert_eq!(maps[1].path, "[stack]");
        assert!(!maps[1].is_file());
        assert_eq!(maps[3].path, "/tmp/a b");
        assert!(maps[0].contains(0x5581a000) && !maps[0].contains(0x5581b000));
    }
}
