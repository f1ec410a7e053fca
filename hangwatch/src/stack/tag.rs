//! Which frames are the program's own. A raw stack of a hung thread is mostly the runtime
//! (libc's futex wrapper, the Rust std, tokio, the CPython interpreter loop); the frame a
//! person wants is the first one of the application (seed 001's lesson).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameTag {
    Kernel,
    /// libc, the dynamic loader, language runtimes and their standard libraries.
    Runtime,
    Application,
}

/// Shared objects that are runtime whatever their symbols (by file name prefix).
const RUNTIME_LIBRARIES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld64.so",
    "ld-musl",
    "libm.so",
    "libdl",
    "librt",
    "libstdc++",
    "libgcc_s",
    "libc++",
    "libpython",
    "libuv",
    "libjvm",
    "libnode",
    "libgevent",
    "libev",
    "libglib",
    "libffi",
    "linux-vdso",
    "[vdso]",
];

/// Executables that are interpreters: their native frames are the runtime's.
const INTERPRETERS: &[&str] = &["python", "node", "java", "ruby", "perl", "php", "lua"];

/// Symbol prefixes of runtimes linked into the executable (Rust std and async runtimes,
/// C start-up code).
const RUNTIME_SYMBOLS: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "<std::",
    "<core::",
    "<alloc::",
    "tokio::",
    "<tokio::",
    "futures::",
    "futures_util::",
    "<futures",
    "parking_lot",
    "<parking_lot",
    "crossbeam",
    "<crossbeam",
    "mio::",
    "<mio::",
    "__rust",
    "rust_begin_unwind",
    "_start",
    "__libc_start",
    "start_thread",
    "clone3",
    "__clone",
    "_Py",
    "Py",
    // glibc internals, for statically linked programs where libc is not a module of its own.
    "__lll_",
    "lll_",
    "__pthread_",
    "___pthread_",
    "pthread_",
    "__GI_",
    "__futex",
    "futex_",
    "__libc_",
    "__new_sem",
    "sem_",
    "__nanosleep",
    "__clock_nanosleep",
    "clock_nanosleep",
    "__select",
    "__poll",
    "__read",
    "__write",
    "__epoll",
    "epoll_wait",
    "__syscall_cancel",
];

pub fn classify(module: Option<&str>, symbol: Option<&str>) -> FrameTag {
    let file_name = module
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .unwrap_or("");
    if RUNTIME_LIBRARIES
        .iter()
        .any(|lib| file_name.starts_with(lib))
        || INTERPRETERS.iter().any(|exe| file_name.starts_with(exe))
    {
        return FrameTag::Runtime;
    }
    match symbol {
        Some(symbol) if RUNTIME_SYMBOLS.iter().any(|p| symbol.starts_with(p)) => FrameTag::Runtime,
        _ => FrameTag::Application,
    }
}

/// A Python frame is the application's unless its file is the interpreter's own standard
/// library (`.../lib/python3.X/`, outside `site-packages`) or frozen into it: so
/// `blocked_here` names the program's function that called `threading.py`, not
/// `Condition.wait`.
pub fn classify_python(file: &str) -> FrameTag {
    let stdlib = file.contains("/lib/python3.")
        && !file.contains("/site-packages/")
        && !file.contains("/dist-packages/");
    if stdlib || file.starts_with("<frozen ") {
        FrameTag::Runtime
    } else {
        FrameTag::Application
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_runtimes_and_the_program() {
        let libc = Some("/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(
            classify(libc, Some("pthread_mutex_lock")),
            FrameTag::Runtime
        );
        assert_eq!(
            classify(Some("/usr/bin/python3.11"), Some("main")),
            FrameTag::Runtime
        );
        let app = Some("/srv/api");
        assert_eq!(classify(app, Some("std::thread::sleep")), FrameTag::Runtime);
        assert_eq!(
            classify(app, Some("<tokio::runtime::task::Task as Drop>::drop")),
            FrameTag::Runtime
        );
        assert_eq!(classify(app, Some("api::handler")), FrameTag::Application);
        assert_eq!(classify(app, Some("take_locks")), FrameTag::Application);
        // Static programs carry libc inside the executable.
        assert_eq!(classify(app, Some("__lll_lock_wait")), FrameTag::Runtime);
        assert_eq!(classify(app, None), FrameTag::Application);
    }

    #[test]
    fn python_files_of_the_program_and_of_the_standard_library() {
        assert_eq!(classify_python("/srv/app/server.py"), FrameTag::Application);
        assert_eq!(
            classify_python("/usr/lib/python3.11/threading.py"),
            FrameTag::Runtime
        );
        assert_eq!(
            classify_python("/root/.pyenv/versions/3.12.1/lib/python3.12/asyncio/events.py"),
            FrameTag::Runtime
        );
        assert_eq!(
            classify_python("/venv/lib/python3.11/site-packages/gevent/hub.py"),
            FrameTag::Application
        );
        assert_eq!(
            classify_python("<frozen importlib._bootstrap>"),
            FrameTag::Runtime
        );
    }
}
