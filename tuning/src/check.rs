//! `floe tune --check`: the system settings that decide whether thread-per-core io_uring
//! serving reaches what the disks can do. Every finding says what it is, why it matters for
//! floe, and the exact command or config line that fixes it. Nothing here changes the system.
//!
//! The parsers take file contents (so tests run on fixtures); [`report`] reads the real files.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As floe wants it.
    Ok,
    /// Works, but costs performance or headroom; the fix says what to change.
    Warn,
    /// Stops floe from working as configured.
    Fail,
    /// Could not be read, or nothing to judge.
    Info,
}

/// One checked setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub value: String,
    pub why: String,
    /// The command or config line that fixes it, when there is something to fix.
    pub fix: Option<String>,
    /// The fix needs root.
    pub needs_root: bool,
}

fn finding(check: &str, status: Status, value: impl Into<String>, why: &str) -> Finding {
    Finding {
        check: check.into(),
        status,
        value: value.into(),
        why: why.into(),
        fix: None,
        needs_root: false,
    }
}

impl Finding {
    fn fix(mut self, fix: impl Into<String>, needs_root: bool) -> Self {
        self.fix = Some(fix.into());
        self.needs_root = needs_root;
        self
    }
}

/// The selected value of a sysfs choice list: `always [madvise] never` gives `madvise`.
pub fn bracketed(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: (u32, u32),
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let (major, minor) = fields.get(2)?.split_once(':')?;
            Some(Mount {
                device: (major.parse().ok()?, minor.parse().ok()?),
                mount_point: PathBuf::from(unescape_octal(fields.get(4)?)),
                options: fields.get(5)?.to_string(),
                fs_type: fields.get(separator + 1)?.to_string(),
                source: fields.get(separator + 2)?.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape_octal(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3 && digits.chars().all(|d| ('0'..='7').contains(&d)) {
                if let Ok(value) = u8::from_str_radix(&digits, 8) {
                    out.push(value as char);
                    chars.nth(2);
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// The mount that holds `path` (canonical): the one with the longest mount point that is a
/// prefix of it (the last one wins when mounts stack on the same point).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// io_uring: `/proc/sys/kernel/io_uring_disabled` (absent on kernels before 6.6: enabled).
pub fn check_io_uring(disabled: Option<&str>) -> Finding {
    let why = "floe does all disk I/O through io_uring (glommio); without it the node cannot start";
    match disabled.map(str::trim) {
        None | Some("0") => finding("io_uring", Status::Ok, "enabled", why),
        Some("1") => finding(
            "io_uring",
            Status::Warn,
            "restricted to the io_uring_group",
            why,
        )
        .fix(
            "sysctl -w kernel.io_uring_disabled=0 (or add floe's user to kernel.io_uring_group)",
            true,
        ),
        Some(other) => finding("io_uring", Status::Fail, format!("disabled ({other})"), why)
            .fix("sysctl -w kernel.io_uring_disabled=0", true),
    }
}

/// Locked memory against what glommio registers: `cores` x (`io_memory` + 256 KiB).
pub fn check_memlock(limit: Option<u64>, cores: usize, io_memory: u64) -> Finding {
    let needed = cores as u64 * (io_memory + (256 << 10));
    let why = "each core registers its I/O buffers as locked memory; too little and the node refuses to start";
    match limit {
        None => finding("memlock", Status::Ok, "unlimited", why),
        Some(limit) if limit >= needed => finding(
            "memlock",
            Status::Ok,
            format!("{} KiB (needs {} KiB for {cores} cores)", limit / 1024, needed / 1024),
            why,
        ),
        Some(limit) => finding(
            "memlock",
            Status::Fail,
            format!("{} KiB, needs {} KiB for {cores} cores", limit / 1024, needed / 1024),
            why,
        )
        .fix(
            "ulimit -l unlimited (as root), or LimitMEMLOCK=infinity in the systemd unit, or lower io_memory_bytes in node.toml",
            true,
        ),
    }
}

/// Transparent huge pages: `always` or `madvise` are fine, `never` costs the codec and mapped reads.
pub fn check_thp(enabled: Option<&str>) -> Finding {
    let why = "the encoder's large buffers and the kernel's page tables for mapped segments do better with huge pages";
    match enabled.and_then(bracketed) {
        Some(mode @ ("always" | "madvise")) => {
            finding("transparent_hugepages", Status::Ok, mode, why)
        }
        Some(other) => finding("transparent_hugepages", Status::Warn, other, why).fix(
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
            true,
        ),
        None => finding("transparent_hugepages", Status::Info, "unknown", why),
    }
}

/// CPU frequency governor of each CPU (`None` where there is no cpufreq, as in most VMs).
pub fn check_governor(governors: &[String]) -> Finding {
    let why = "a power-saving governor slows the cores between bursts, which shows as latency";
    if governors.is_empty() {
        return finding(
            "cpu_governor",
            Status::Info,
            "no cpufreq (a VM, or fixed frequency)",
            why,
        );
    }
    let slow: Vec<&String> = governors
        .iter()
        .filter(|g| g.trim() != "performance")
        .collect();
    if slow.is_empty() {
        finding("cpu_governor", Status::Ok, "performance", why)
    } else {
        finding("cpu_governor", Status::Warn, slow[0].trim(), why).fix(
            "cpupower frequency-set -g performance (or: for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do echo performance > $g; done)",
            true,
        )
    }
}

/// Open-files limit: every connection and segment is a descriptor.
pub fn check_nofile(soft: Option<u64>, connections_per_core: u64, cores: usize) -> Finding {
    let needed = connections_per_core * cores as u64 + 1024;
    let why = "each connection and each open segment file takes a file descriptor";
    match soft {
        None => finding("open_files", Status::Ok, "unlimited", why),
        Some(n) if n >= needed => finding("open_files", Status::Ok, n.to_string(), why),
        Some(n) => finding(
            "open_files",
            Status::Warn,
            format!("{n}, below {needed} for {connections_per_core} connections on each of {cores} cores"),
            why,
        )
        .fix(format!("ulimit -n {needed} (or LimitNOFILE={needed} in the systemd unit)"), false),
    }
}

/// The I/O scheduler of a data directory's device.
pub fn check_scheduler(
    dir: &Path,
    scheduler: Option<&str>,
    rotational: bool,
    device: &str,
) -> Finding {
    let check = format!("scheduler {}", dir.display());
    let why = "floe queues its own I/O per core; on SSDs a kernel scheduler only adds latency";
    match scheduler.and_then(bracketed) {
        Some("none") => finding(&check, Status::Ok, "none", why),
        Some(other) if !rotational => finding(&check, Status::Warn, other, why).fix(
            format!("echo none > /sys/block/{device}/queue/scheduler"),
            true,
        ),
        Some(other) => finding(
            &check,
            Status::Ok,
            format!("{other} (rotational disk)"),
            why,
        ),
        None => finding(&check, Status::Info, "unknown", why),
    }
}

/// Read-ahead: mapped reads of segments fault pages in through it.
pub fn check_read_ahead(dir: &Path, kb: Option<u64>, device: &str) -> Finding {
    let check = format!("read_ahead {}", dir.display());
    let why = "hot reads map segments; read-ahead decides how much a page fault pulls in with it";
    match kb {
        Some(kb) if kb >= 128 => finding(&check, Status::Ok, format!("{kb} KiB"), why),
        Some(kb) => finding(&check, Status::Warn, format!("{kb} KiB"), why).fix(
            format!("echo 128 > /sys/block/{device}/queue/read_ahead_kb"),
            true,
        ),
        None => finding(&check, Status::Info, "unknown", why),
    }
}

/// Requests the device queue holds.
pub fn check_nr_requests(dir: &Path, n: Option<u64>, device: &str) -> Finding {
    let check = format!("nr_requests {}", dir.display());
    let why =
        "the device queue must hold every core's in-flight I/O, or submissions wait in the kernel";
    match n {
        Some(n) if n >= 64 => finding(&check, Status::Ok, n.to_string(), why),
        Some(n) => finding(&check, Status::Warn, n.to_string(), why).fix(
            format!("echo 256 > /sys/block/{device}/queue/nr_requests"),
            true,
        ),
        None => finding(&check, Status::Info, "unknown", why),
    }
}

/// NVMe poll queues (`/sys/module/nvme/parameters/poll_queues`).
pub fn check_poll_queues(dir: &Path, device: &str, poll_queues: Option<u64>) -> Finding {
    let check = format!("poll_queues {}", dir.display());
    let why = "with poll queues glommio completes reads by polling (IORING_SETUP_IOPOLL), saving an interrupt per I/O";
    if !device.starts_with("nvme") {
        return finding(
            &check,
            Status::Info,
            format!("{device} is not NVMe: interrupt-driven completions"),
            why,
        );
    }
    match poll_queues {
        Some(n) if n > 0 => finding(&check, Status::Ok, n.to_string(), why),
        _ => finding(&check, Status::Warn, "0", why).fix(
            "add nvme.poll_queues=<cores> to the kernel command line (or modprobe nvme poll_queues=<cores>) and reboot",
            true,
        ),
    }
}

/// File system and mount options of a data directory.
pub fn check_mount(dir: &Path, mount: Option<&Mount>) -> Finding {
    let check = format!("filesystem {}", dir.display());
    let why = "floe needs O_DIRECT; xfs and ext4 are the tested file systems";
    let Some(mount) = mount else {
        return finding(&check, Status::Info, "mount not found", why);
    };
    let value = format!(
        "{} on {} ({})",
        mount.fs_type,
        mount.mount_point.display(),
        mount.options
    );
    match mount.fs_type.as_str() {
        "xfs" | "ext4" => {
            if mount
                .options
                .split(',')
                .any(|o| o == "noatime" || o == "relatime")
            {
                finding(&check, Status::Ok, value, why)
            } else {
                finding(
                    &check,
                    Status::Warn,
                    value,
                    "every read updating access times costs writes",
                )
                .fix(
                    format!("mount -o remount,noatime {}", mount.mount_point.display()),
                    true,
                )
            }
        }
        "tmpfs" | "overlay" | "nfs" | "nfs4" | "fuse" => finding(&check, Status::Warn, value, why)
            .fix(
                "put data_dirs on a local xfs or ext4 file system of an NVMe device",
                false,
            ),
        _ => finding(&check, Status::Info, value, why),
    }
}

/// Free space of a data directory.
pub fn check_free_space(dir: &Path, free: Option<(u64, u64)>) -> Finding {
    let check = format!("free_space {}", dir.display());
    let why = "a full disk refuses new writes (507); reclaiming needs room to copy live records";
    match free {
        Some((free, total)) if total > 0 && free * 10 >= total => finding(
            &check,
            Status::Ok,
            format!(
                "{} of {} GB free",
                free / 1_000_000_000,
                total / 1_000_000_000
            ),
            why,
        ),
        Some((free, total)) => finding(
            &check,
            Status::Warn,
            format!(
                "{} of {} GB free",
                free / 1_000_000_000,
                total / 1_000_000_000
            ),
            why,
        )
        .fix(
            "free space or add a data directory on another disk (data_dirs in node.toml)",
            false,
        ),
        None => finding(&check, Status::Info, "unknown", why),
    }
}

/// Cores and NUMA nodes.
pub fn check_topology(cores: usize, numa_nodes: usize) -> Finding {
    let why =
        "floe runs one executor per core; on several NUMA nodes, keep a disk's cores on its node";
    let value = format!("{cores} cores, {numa_nodes} NUMA node(s)");
    if numa_nodes > 1 {
        finding("topology", Status::Info, value, why).fix(
            "run one node per NUMA node, with cores and data_dirs of that node",
            false,
        )
    } else {
        finding("topology", Status::Ok, value, why)
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The sysfs directory of the whole disk holding `dir`, and its name.
pub fn block_device(dir: &Path) -> Option<(PathBuf, String)> {
    let stat = rustix::fs::stat(dir).ok()?;
    let (major, minor) = (
        rustix::fs::major(stat.st_dev),
        rustix::fs::minor(stat.st_dev),
    );
    let mut sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    if sys.join("partition").exists() {
        sys = sys.parent()?.to_path_buf();
    }
    let name = sys.file_name()?.to_str()?.to_string();
    Some((sys, name))
}

/// Everything `floe tune --check` looks at, for the given data directories.
pub fn report(
    dirs: &[PathBuf],
    cores: usize,
    io_memory: u64,
    connections_per_core: u64,
) -> Vec<Finding> {
    let mut findings = vec![
        check_io_uring(read("/proc/sys/kernel/io_uring_disabled").as_deref()),
        check_memlock(
            rustix::process::getrlimit(rustix::process::Resource::Memlock).current,
            cores,
            io_memory,
        ),
        check_nofile(
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            connections_per_core,
            cores,
        ),
        check_topology(
            cores,
            std::fs::read_dir("/sys/devices/system/node")
                .map(|d| {
                    d.flatten()
                        .filter(|e| {
                            let name = e.file_name();
                            let name = name.to_string_lossy();
                            name.starts_with("node")
                                && name[4..].chars().all(|c| c.is_ascii_digit())
                        })
                        .count()
                        .max(1)
                })
                .unwrap_or(1),
        ),
        check_thp(read("/sys/kernel/mm/transparent_hugepage/enabled").as_deref()),
        check_governor(
            &(0..cores)
                .filter_map(|cpu| {
                    read(format!(
                        "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
                    ))
                })
                .collect::<Vec<_>>(),
        ),
    ];
    let mounts = parse_mountinfo(&read("/proc/self/mountinfo").unwrap_or_default());
    for dir in dirs {
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        findings.push(check_mount(dir, mount_of(&mounts, &canonical)));
        let space = rustix::fs::statvfs(dir)
            .ok()
            .map(|s| (s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize));
        findings.push(check_free_space(dir, space));
        match block_device(dir) {
            Some((sys, device)) => {
                let queue = sys.join("queue");
                let rotational = read_u64(queue.join("rotational")) == Some(1);
                findings.push(check_scheduler(
                    dir,
                    read(queue.join("scheduler")).as_deref(),
                    rotational,
                    &device,
                ));
                findings.push(check_read_ahead(
                    dir,
                    read_u64(queue.join("read_ahead_kb")),
                    &device,
                ));
                findings.push(check_nr_requests(
                    dir,
                    read_u64(queue.join("nr_requests")),
                    &device,
                ));
                findings.push(check_poll_queues(
                    dir,
                    &device,
                    read_u64("/sys/module/nvme/parameters/poll_queues"),
                ));
            }
            None => findings.push(finding(
                &format!("device {}", dir.display()),
                Status::Info,
                "not on a block device (tmpfs, overlay or a network file system?)",
                "the device checks (scheduler, read-ahead, queue, poll queues) need a block device",
            )),
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap()
    }

    #[test]
    fn choice_lists_give_the_selected_value() {
        assert_eq!(bracketed(&fixture("thp_enabled")), Some("madvise"));
        assert_eq!(bracketed(&fixture("scheduler_nvme")), Some("none"));
        assert_eq!(bracketed(&fixture("scheduler_virtio")), Some("mq-deadline"));
        assert_eq!(bracketed("none"), None);
        assert_eq!(
            check_thp(Some("always madvise [never]")).status,
            Status::Warn
        );
        assert_eq!(check_thp(Some(&fixture("thp_enabled"))).status, Status::Ok);
    }

    #[test]
    fn mountinfo_finds_the_mount_of_a_path() {
        let mounts = parse_mountinfo(&fixture("mountinfo"));
        assert_eq!(mounts.len(), 6, "the malformed line is skipped");
        let data = mount_of(&mounts, Path::new("/data/nvme0/floe")).unwrap();
        assert_eq!(data.fs_type, "xfs");
        assert_eq!(data.device, (259, 1));
        assert!(data.options.contains("noatime"));
        let root = mount_of(&mounts, Path::new("/home/x")).unwrap();
        assert_eq!(root.fs_type, "ext4");
        let spaced = mount_of(&mounts, Path::new("/mnt/my disk/a")).unwrap();
        assert_eq!(spaced.mount_point, Path::new("/mnt/my disk"));
        assert_eq!(
            check_mount(Path::new("/data/nvme0"), Some(data)).status,
            Status::Ok
        );
        let tmp = mount_of(&mounts, Path::new("/tmp/x")).unwrap();
        assert_eq!(
            check_mount(Path::new("/tmp/x"), Some(tmp)).status,
            Status::Warn
        );
    }

    #[test]
    fn settings_are_judged_with_a_fix() {
        let memlock = check_memlock(Some(8 << 20), 16, 1 << 20);
        assert_eq!(memlock.status, Status::Fail);
        assert!(memlock.fix.unwrap().contains("ulimit -l"));
        assert!(memlock.needs_root);
        assert_eq!(check_memlock(Some(8 << 20), 4, 1 << 20).status, Status::Ok);
        assert_eq!(check_memlock(None, 64, 1 << 30).status, Status::Ok);
        assert_eq!(check_io_uring(Some("2\n")).status, Status::Fail);
        assert_eq!(check_io_uring(None).status, Status::Ok);
        let scheduler = check_scheduler(
            Path::new("/d"),
            Some(&fixture("scheduler_virtio")),
            false,
            "vda",
        );
        assert_eq!(scheduler.status, Status::Warn);
        assert_eq!(
            scheduler.fix.as_deref(),
            Some("echo none > /sys/block/vda/queue/scheduler")
        );
        assert_eq!(check_governor(&["powersave\n".into()]).status, Status::Warn);
        assert_eq!(check_governor(&[]).status, Status::Info);
        assert_eq!(check_nofile(Some(1024), 4096, 2).status, Status::Warn);
        assert_eq!(
            check_poll_queues(Path::new("/d"), "nvme0n1", Some(0)).status,
            Status::Warn
        );
        assert_eq!(
            check_poll_queues(Path::new("/d"), "nvme0n1", Some(4)).status,
            Status::Ok
        );
        assert_eq!(
            check_free_space(Path::new("/d"), Some((5, 100))).status,
            Status::Warn
        );
        assert_eq!(
            check_read_ahead(Path::new("/d"), Some(8), "vda").status,
            Status::Warn
        );
        assert_eq!(
            check_nr_requests(Path::new("/d"), Some(32), "vda").status,
            Status::Warn
        );
    }

    #[test]
    fn the_real_system_is_reported_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let findings = report(&[dir.path().to_path_buf()], 2, 1 << 20, 4096);
        assert!(findings.iter().any(|f| f.check == "io_uring"));
        assert!(findings.iter().any(|f| f.check.starts_with("free_space")));
    }
}
