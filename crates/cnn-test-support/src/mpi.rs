//! Running a program under `mpirun` in a test, with a timeout, so that a job
//! that hangs fails the test instead of the whole suite.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What an `mpirun` job left: its exit code (`None` when killed at the
/// timeout), stdout, stderr, and how long it ran.
#[derive(Debug)]
pub struct Job {
    /// The exit code of `mpirun`; `None` when the timeout killed it.
    pub code: Option<i32>,
    /// Everything the ranks printed to stdout.
    pub stdout: String,
    /// Everything the ranks and mpirun printed to stderr.
    pub stderr: String,
    /// Wall time.
    pub seconds: f64,
}

impl Job {
    /// Whether mpirun exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The output, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
            self.code, self.seconds, self.stdout, self.stderr
        )
    }
}

/// The flags every test job gets: run as root (CI containers), allow more
/// ranks than cores (`--oversubscribe`, 2-core CI machines), and leave
/// placement to the OS (`--bind-to none`: OpenMPI would pin rank 0 of every
/// job to core 0).
pub const MPIRUN_FLAGS: [&str; 4] = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"];

/// Held by a test for as long as its MPI jobs run: jobs on 2 cores at the
/// same time would starve each other (MPI ranks spin while they wait).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `mpirun -np ranks program args…` in `cwd` with [`MPIRUN_FLAGS`], killed
/// after `timeout`; each rank's threads come from the program's own flags.
///
/// # Panics
/// When `mpirun` cannot be started: the distributed tests need OpenMPI
/// (`apt-get install openmpi-bin libopenmpi-dev`, see docs/distributed.md).
pub fn mpirun(ranks: usize, program: &Path, args: &[&str], cwd: &Path, timeout: Duration) -> Job {
    let started = Instant::now();
    let mut child = Command::new("mpirun")
        .args(MPIRUN_FLAGS)
        .args(["-np", &ranks.to_string()])
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start mpirun ({e}): install OpenMPI, see docs/distributed.md")
        });
    // Drain the pipes on threads so a chatty job cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                // SIGTERM first: mpirun then ends its ranks, which SIGKILL
                // would leave behind, spinning in MPI's progress loop.
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let grace = Instant::now();
                while grace.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Job {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        seconds: started.elapsed().as_secs_f64(),
    }
}
