//! Giving back the memory a shim touched while it created the container.
//!
//! Creating a container runs a lot of libcontainer code once; afterwards the shim only runs its
//! small `poll` loop. The pages of code and read-only data touched at start stay resident and
//! count against every running container, so once the container runs the shim drops them: they
//! are clean file pages, and the kernel reads them back from the page cache if they are ever
//! needed again.

/// Returns freed heap memory to the kernel and drops clean read-only file-backed pages.
pub(crate) fn release_startup_memory() {
    // SAFETY: malloc_trim only hands free heap memory back to the kernel; it does not touch
    // allocated blocks.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    for mapping in droppable_mappings(&smaps) {
        let (start, end) = mapping;
        // SAFETY: [start, end) is a whole mapping of this process that is file-backed, not
        // writable, and holds no anonymous (copy-on-write) pages. MADV_DONTNEED on such a private
        // file mapping only removes page-table entries; later accesses fault the unchanged file
        // contents back in, so no data can be lost. No Rust reference points into a specific
        // physical page, only to virtual addresses that stay valid.
        // MADV_RANDOM asks the kernel not to fault pages back in 64 KiB batches (older kernels
        // honour it for fault-around; newer ones only for readahead).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Address ranges of mappings that are file-backed, not writable and have no anonymous pages.
fn droppable_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-').filter(|(lo, _)| lo.chars().all(|c| c.is_ascii_hexdigit())) {
            current = None;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let perms = fields.get(1).copied().unwrap_or_default();
            let path = fields.get(5).copied().unwrap_or_default();
            let file_backed = path.starts_with('/');
            let read_only = perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p');
            if file_backed && read_only {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    current = Some((lo, hi));
                }
            }
        } else if let Some(rest) = line.strip_prefix("Anonymous:") {
            if let Some(range) = current.take() {
                if rest.trim().trim_end_matches("kB").trim() == "0" {
                    out.push(range);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/shoal
Size: 1024 kB
Anonymous: 0 kB
55d0a0100000-55d0a0200000 r-xp 00100000 fd:01 123 /usr/bin/shoal
Anonymous: 0 kB
55d0a0200000-55d0a0210000 r--p 00200000 fd:01 123 /usr/bin/shoal
Anonymous: 64 kB
55d0a0210000-55d0a0220000 rw-p 00210000 fd:01 123 /usr/bin/shoal
Anonymous: 8 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Anonymous: 132 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0 [vdso]
Anonymous: 0 kB
";
        assert_eq!(droppable_mappings(smaps), vec![(0x55d0a0000000, 0x55d0a0100000), (0x55d0a0100000, 0x55d0a0200000)]);
    }

    #[test]
    fn dropping_pages_keeps_the_process_working() {
        release_startup_memory();
        // Code and read-only data fault back in transparently.
        let v: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
        assert_eq!(v[42], "42");
    }
}
