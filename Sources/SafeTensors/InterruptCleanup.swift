import CFiles
import Foundation

/// SIGINT, SIGTERM and SIGHUP end the process promptly and leave no staging output behind.
///
/// No cleanup runs inside a signal handler: the handlers (C, `CFiles`) only write the signal's
/// number to a pipe, which is async-signal-safe whichever thread they interrupt. One dedicated
/// thread reads that pipe. It is an ordinary thread, so it may allocate and take locks: it removes
/// every staging output (`AtomicOutput.abandonAllForExit`, which also waits for a commit in
/// progress, so an output is either wholly in place or not there), then dies of the same signal
/// with its default action (exit status 128 + signal in a shell: 130, 143, 129).
///
/// SIGBUS (an input truncated under a memory mapping) cannot be resumed: its handler writes a fixed
/// message with `write(2)`, forwards to the same thread, which cleans up and exits 1, and the
/// faulting thread sleeps until then (`alarm` ends the process should cleanup ever stall).
public enum InterruptCleanup {
    /// Set once a terminating signal has been taken; error reporting checks it so an interrupted
    /// run prints no misleading `error:` line while it is being torn down.
    nonisolated(unsafe) public private(set) static var interrupted = false

    /// Kept alive for the process's lifetime: the SIGBUS handler reads it.
    nonisolated(unsafe) private static let busMessage = strdup(
        "error: an input file changed size while being read (modified or truncated by another program); no output was written\n")

    /// Installs the handling. Call first thing in `main`.
    public static func install() {
        guard lora_signals_install(busMessage) == 0 else { return }
        let waiter = Thread {
            let signal = lora_signals_wait()
            guard signal > 0 else { return }
            interrupted = true
            AtomicOutput.abandonAllForExit()
            if signal == SIGBUS { _exit(1) }
            lora_die_of_signal(signal)
        }
        waiter.stackSize = 1 << 20
        waiter.start()
    }
}
