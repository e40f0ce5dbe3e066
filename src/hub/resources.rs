//! Host resources for the heartbeat, via sysinfo: CPU %, load, memory,
//! the data volume's disk, VM uptime. Only what the beat needs is
//! refreshed (no process table, no network, no components), so a sample
//! costs a few reads of `/proc` and one `statvfs`. Blocking: call on the
//! blocking pool.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, System};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostReport {
    /// Seconds since the VM booted.
    pub uptime_s: u64,
    /// All CPUs, since the previous sample; `None` when the previous
    /// sample is too recent to say (the first beat).
    pub cpu_percent: Option<f32>,
    pub cpu_count: usize,
    pub load: LoadReport,
    pub memory: SpaceReport,
    /// The volume holding the data directory; `None` if not found.
    pub disk: Option<SpaceReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadReport {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpaceReport {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

pub struct Sampler {
    sys: System,
    disks: Disks,
    data_dir: PathBuf,
    disk: Option<usize>,
    last_cpu: Instant,
}

impl Sampler {
    /// Blocking: reads the mount table once.
    pub fn new(data_dir: &Path) -> Sampler {
        let mut sys = System::new();
        sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing());
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let disk = volume_of(&disks, &data_dir);
        Sampler {
            sys,
            disks,
            data_dir,
            disk,
            last_cpu: Instant::now(),
        }
    }

    /// Blocking: one sample.
    pub fn sample(&mut self) -> HostReport {
        let cpu_fresh = self.last_cpu.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
        self.sys
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        self.last_cpu = Instant::now();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let load = System::load_average();
        let total = self.sys.total_memory();
        HostReport {
            uptime_s: System::uptime(),
            cpu_percent: cpu_fresh.then(|| self.sys.global_cpu_usage()),
            cpu_count: self.sys.cpus().len(),
            load: LoadReport {
                one: load.one,
                five: load.five,
                fifteen: load.fifteen,
            },
            memory: SpaceReport {
                used_bytes: total.saturating_sub(self.sys.available_memory()),
                total_bytes: total,
            },
            disk: self.disk_report(),
        }
    }

    fn disk_report(&mut self) -> Option<SpaceReport> {
        let refresh = DiskRefreshKind::nothing().with_storage();
        let fresh = match self.disk {
            Some(i) => self
                .disks
                .list_mut()
                .get_mut(i)
                .is_some_and(|d| d.refresh_specifics(refresh)),
            None => false,
        };
        if !fresh {
            // The mount table changed (or the first lookup failed): look again.
            self.disks
                .refresh_specifics(true, DiskRefreshKind::nothing());
            self.disk = volume_of(&self.disks, &self.data_dir);
            let i = self.disk?;
            let d = self.disks.list_mut().get_mut(i)?;
            if !d.refresh_specifics(refresh) {
                return None;
            }
        }
        let d = self.disks.list().get(self.disk?)?;
        Some(SpaceReport {
            used_bytes: d.total_space().saturating_sub(d.available_space()),
            total_bytes: d.total_space(),
        })
    }
}

/// Index of the disk whose mount point is the longest prefix of `path`.
fn volume_of(disks: &Disks, path: &Path) -> Option<usize> {
    disks
        .list()
        .iter()
        .enumerate()
        .filter(|(_, d)| path.starts_with(d.mount_point()))
        .max_by_key(|(_, d)| d.mount_point().as_os_str().len())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reports_plausible_values() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Sampler::new(dir.path());
        let first = s.sample();
        assert!(first.cpu_percent.is_none(), "too soon for a CPU figure");
        assert!(first.memory.total_bytes > 0);
        assert!(first.memory.used_bytes <= first.memory.total_bytes);
        assert!(first.uptime_s > 0);
        assert!(first.cpu_count > 0);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let second = s.sample();
        let cpu = second.cpu_percent.expect("cpu after the minimum interval");
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        if let Some(disk) = second.disk {
            assert!(disk.total_bytes > 0 && disk.used_bytes <= disk.total_bytes);
        }
    }
}
