import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `lora-bench`: generates the workload and times cp -r, merge, verify and inspect in alternation.
///
/// Usage: lora-bench [--size small|medium|1b|3b|sd15|sdxl] [--repeat N] [--work DIR] [--bin PATH] [--markdown FILE]
///                   [--peft-python PYTHON]   (adds PEFT's merge_and_unload, via scripts/peft-merge.py)
///                   [--only 'ROW;ROW…']      (just these rows, and cp -r, the baseline of every ratio)
/// Measures cp -r, cp -r + sync, merge, merge --no-sync, merge of a LoHa and a LoKr adapter, merge into the NF4 base (dense output, and
/// --requantize nf4) and verify of that merge, merge into the FP8 base (dense, and --requantize keep), merge into
/// the base converted to a Q8_0 GGUF file (Q8_0 output, and --gguf-type f16), verify, a merge in 500 MB shards whole and as two
/// concurrent parts plus the assembly (outputs compared byte for byte), extract --rank 16 (base vs
/// merged), inspect, and combine of four r = 16
/// adapters (svd to rank 16, cat). Reports the median and spread of wall time, CPU time and peak RSS
/// per command, GB/s over the (dense) base size, each time as a ratio to the `cp -r` time measured in
/// the same run, and the peak extra disk space each command took beyond its final output (free space
/// of the output's file system sampled every 50 ms; other writers on that file system add noise).
/// `merge` writes its output durably (direct I/O, fsync before the rename), so `cp -r + sync` is its
/// like-for-like copy; `merge --no-sync` writes through the page cache without fsync, like `cp -r`.
@main
struct Bench {
    struct Sample { var wall: Double; var cpu: Double; var maxRSS: Int; var extraDisk: Int = 0 }

    static func main() throws {
        var args = Array(CommandLine.arguments.dropFirst())
        func value(_ flag: String, _ fallback: String) -> String {
            guard let i = args.firstIndex(of: flag), i + 1 < args.count else { return fallback }
            let v = args[i + 1]
            args.removeSubrange(i...(i + 1))
            return v
        }
        let size = value("--size", "small")
        let repeats = Int(value("--repeat", "3")) ?? 3
        let work = value("--work", FileManager.default.currentDirectoryPath + "/bench-work")
        let bin = value("--bin", URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/lora-tool")
        let markdown = value("--markdown", "")
        let peftPython = value("--peft-python", "")
        // `--only 'cp -r;merge;merge (LoHa r=16)'`: just these rows (exact names, `;`-separated).
        let only = Set(value("--only", "").split(separator: ";").map(String.init))
        if let image = ImageWorkload.sizes[size] {
            if args.contains("--generate-only") { return try image.generate(in: work + "/" + size) }
            return try runImage(image, work: work, bin: bin, repeats: repeats, markdown: markdown)
        }
        guard let workload = Workload.sizes[size] else {
            FileHandle.standardError.write(Data("error: --size must be small, medium, 1b, 3b, sd15 or sdxl\n".utf8))
            exit(64)
        }
        let dir = work + "/" + size
        if args.contains("--generate-only") {
            try workload.generate(in: dir)
            return
        }
        let t0 = Date()
        // Generate in a child process, so this process stays small and the peak RSS the kernel reports
        // for the measured children (which start as copies of this one) is theirs alone.
        _ = try run([CommandLine.arguments[0], "--generate-only", "--size", size, "--work", work], quiet: false)
        let baseBytes = directorySize(dir + "/base")
        print("workload \(size): base \(String(format: "%.2f", Double(baseBytes) / 1e9)) GB (generated or reused in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s)")

        let out = dir + "/out"
        let uncachedMerged = ["/bin/sh", "-c", "for f in \"$1\"/*.safetensors; do dd if=\"$f\" iflag=nocache count=0 status=none; done; shift; exec \"$@\"", "sh", out + "/merged"]
        // (row name, argv, output path whose final size is not counted as extra disk use)
        var commands: [(String, [String], String?)] = [
            ("cp -r", ["/bin/cp", "-r", dir + "/base", out + "/cp"], out + "/cp"),
            ("cp -r + sync", ["/bin/sh", "-c", "cp -r '\(dir)/base' '\(out)/cps' && sync -f '\(out)/cps'"], out + "/cps"),
            ("merge", [bin, "merge", "--base", dir + "/base", "--adapter", dir + "/adapter", "--output", out + "/merged", "--quiet"], out + "/merged"),
            ("merge --no-sync", [bin, "merge", "--base", dir + "/base", "--adapter", dir + "/adapter", "--output", out + "/merged-no-sync", "--quiet", "--no-sync"],
             out + "/merged-no-sync"),
            // LoHa and LoKr at r = 16 on the same projections (Workload+Types.swift, issue 21).
            ("merge (LoHa r=16)", [bin, "merge", "--base", dir + "/base", "--adapter", dir + "/adapter-loha", "--output", out + "/merged-loha", "--quiet"],
             out + "/merged-loha"),
            ("merge (LoKr r=16)", [bin, "merge", "--base", dir + "/base", "--adapter", dir + "/adapter-lokr", "--output", out + "/merged-lokr", "--quiet"],
             out + "/merged-lokr"),
            // The NF4 base (Workload+NF4.swift): a dense merged output, and one requantized to NF4.
            ("merge (NF4 base)", [bin, "merge", "--base", dir + "/base-nf4", "--adapter", dir + "/adapter", "--output", out + "/merged-nf4", "--quiet"],
             out + "/merged-nf4"),
            ("merge --requantize nf4 (NF4 base)", [bin, "merge", "--base", dir + "/base-nf4", "--adapter", dir + "/adapter", "--output", out + "/requantized-nf4",
                                                   "--quiet", "--requantize", "nf4"], out + "/requantized-nf4"),
            // The FP8 base (Workload+FP8.swift): a dense merged output, and one written back in FP8.
            ("merge (FP8 base)", [bin, "merge", "--base", dir + "/base-fp8", "--adapter", dir + "/adapter", "--output", out + "/merged-fp8", "--quiet"],
             out + "/merged-fp8"),
            ("merge --requantize keep (FP8 base)", [bin, "merge", "--base", dir + "/base-fp8", "--adapter", dir + "/adapter", "--output", out + "/requantized-fp8",
                                                    "--quiet", "--requantize", "keep"], out + "/requantized-fp8"),
            // The Q8_0 GGUF base (Workload+GGUF.swift, issue 18): merged tensors requantized to Q8_0 (the
            // default --gguf-type keep), and written as F16.
            ("merge (Q8_0 GGUF base)", [bin, "merge", "--base", dir + "/base-q8_0.gguf", "--adapter", dir + "/adapter", "--output", out + "/merged.gguf", "--quiet"],
             out + "/merged.gguf"),
            ("merge --gguf-type f16 (Q8_0 GGUF base)", [bin, "merge", "--base", dir + "/base-q8_0.gguf", "--adapter", dir + "/adapter", "--output", out + "/merged-f16.gguf",
                                                        "--quiet", "--gguf-type", "f16"], out + "/merged-f16.gguf"),
            // verify against the NF4 base reads the merged files from the disk, decoding the base's 4-bit blocks as it goes.
            ("verify (NF4 base)", ["/bin/sh", "-c", "for f in \"$1\"/*.safetensors; do dd if=\"$f\" iflag=nocache count=0 status=none; done; shift; exec \"$@\"", "sh",
                                   out + "/merged-nf4", bin, "verify", "--base", dir + "/base-nf4", "--adapter", dir + "/adapter", "--merged", out + "/merged-nf4"], nil),
            // Each verify first drops the merged files from the page cache (GNU dd's nocache with count=0),
            // so every mode reads them from the disk, as right after a merge (which writes with direct I/O).
            ("verify", uncachedMerged + [bin, "verify", "--base", dir + "/base", "--adapter", dir + "/adapter", "--merged", out + "/merged"], nil),
            ("verify --mode exact", uncachedMerged + [bin, "verify", "--base", dir + "/base", "--adapter", dir + "/adapter", "--merged", out + "/merged", "--mode", "exact"], nil),
            ("verify --mode probes", uncachedMerged + [bin, "verify", "--base", dir + "/base", "--adapter", dir + "/adapter", "--merged", out + "/merged", "--mode", "probes"], nil),
            // Partitioned merge (issue 19): the same merge in 500 MB shards, once whole and once as two
            // concurrent part processes plus the assembly; the two outputs are compared byte for byte.
            ("merge --max-shard-size 500MB", [bin, "merge", "--base", dir + "/base", "--adapter", dir + "/adapter", "--output", out + "/merged-500",
                                              "--quiet", "--max-shard-size", "500MB"], out + "/merged-500"),
            ("merge --part 0/2 & 1/2, --assemble", ["/bin/sh", "-c", """
                "$1" merge --base "$2" --adapter "$3" --output "$4" --quiet --max-shard-size 500MB --part 0/2 & a=$!
                "$1" merge --base "$2" --adapter "$3" --output "$4" --quiet --max-shard-size 500MB --part 1/2 & b=$!
                wait $a && wait $b && "$1" merge --assemble "$4" >/dev/null
                """, "sh", bin, dir + "/base", dir + "/adapter", out + "/merged-parts"], out + "/merged-parts"),
            ("extract --rank 16", [bin, "extract", "--base", dir + "/base", "--finetuned", out + "/merged", "--rank", "16", "--output", out + "/extracted"], out + "/extracted"),
            ("inspect", [bin, "inspect", dir + "/base"], nil),
        ]
        // combine: the four r = 16 adapters (adapter, adapter2…4), weights 0.4/0.3/0.2/0.1.
        let combineInputs = zip(["adapter"] + Workload.extraAdapters, ["0.4", "0.3", "0.2", "0.1"]).flatMap { ["--adapter", "\(dir)/\($0)", "--weight", $1] }
        commands.append(("combine svd --rank 16 (4 adapters)", [bin, "combine"] + combineInputs + ["--method", "svd", "--rank", "16", "--output", out + "/combined-svd"],
                          out + "/combined-svd"))
        commands.append(("combine cat (4 adapters)", [bin, "combine"] + combineInputs + ["--method", "cat", "--output", out + "/combined-cat"], out + "/combined-cat"))
        if !peftPython.isEmpty {
            // Optional: PEFT's documented path on the same workload, when torch and peft are installed.
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("scripts/peft-merge.py").path
            commands.append(("PEFT merge_and_unload", [peftPython, script, dir + "/base", dir + "/adapter", out + "/peft"], out + "/peft"))
        }
        if !only.isEmpty {
            let unknown = only.subtracting(commands.map(\.0))
            guard unknown.isEmpty else {
                FileHandle.standardError.write(Data("error: --only names no row \(unknown.sorted().joined(separator: ", ")) (rows: \(commands.map(\.0).joined(separator: "; ")))\n".utf8))
                exit(64)
            }
            commands = commands.filter { only.contains($0.0) || $0.0 == "cp -r" }
        }
        var samples: [String: [Sample]] = [:]
        // Warm the page cache once so every command sees the same state.
        for model in ["base", "base-nf4", "base-fp8"] {
            _ = try run(["/bin/cat"] + (try FileManager.default.contentsOfDirectory(atPath: dir + "/" + model)).map { dir + "/\(model)/" + $0 }, quiet: true)
        }
        _ = try run(["/bin/cat", dir + "/base-q8_0.gguf"], quiet: true)
        for r in 0..<repeats {
            try? FileManager.default.removeItem(atPath: out)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for (name, argv, output) in commands {
                // Start every command with no dirty pages pending, so nobody pays for another's writeback.
                _ = try run(["/bin/sync"], quiet: true)
                let s = try run(argv, quiet: true, diskOf: out, output: output)
                samples[name, default: []].append(s)
                if name.hasPrefix("merge --part") {
                    for f in try FileManager.default.contentsOfDirectory(atPath: out + "/merged-500") where f != ".lora-tool" {
                        _ = try run(["/usr/bin/cmp", "-s", out + "/merged-500/" + f, out + "/merged-parts/" + f], quiet: true)
                    }
                }
                for copy in ["cp", "cps", "merged-no-sync", "merged-loha", "merged-lokr", "requantized-nf4", "merged-fp8", "requantized-fp8", "merged.gguf", "merged-f16.gguf", "merged-500", "merged-parts"] where !name.hasPrefix("merge --max-shard-size") {
                    try? FileManager.default.removeItem(atPath: out + "/" + copy)
                }
            }
            print("repetition \(r + 1)/\(repeats) done")
        }
        try? FileManager.default.removeItem(atPath: out)
        report(rows: commands.map(\.0), samples: samples, baseBytes: baseBytes, markdown: markdown,
               title: "\(size) (\(String(format: "%.2f", Double(baseBytes) / 1e9)) GB bf16 base, r=16 adapter on all seven projections)",
               command: "scripts/bench --size \(size) --repeat \(repeats)\(only.isEmpty ? "" : " --only '" + only.sorted().joined(separator: ";") + "'")", repeats: repeats)
    }

    /// Prints the table of `rows` (median and spread of wall time, CPU, peak RSS, GB/s over
    /// `baseBytes`, × the `cp -r` row's wall time, peak extra disk) and appends it to `markdown`
    /// under `title` when given.
    static func report(rows names: [String], samples: [String: [Sample]], baseBytes: Int, markdown: String, title: String, command: String, repeats: Int) {
        let cp = median(samples["cp -r"]!.map(\.wall))
        var rows = ["| command | wall median (s) | spread (s) | CPU (s) | peak RSS (MB) | GB/s | × cp | peak extra disk (MB) |",
                    "|---|---|---|---|---|---|---|---|"]
        for name in names {
            let s = samples[name]!
            let wall = median(s.map(\.wall))
            let spread = (s.map(\.wall).max()! - s.map(\.wall).min()!)
            rows.append(String(format: "| %@ | %.3f | %.3f | %.2f | %.0f | %.2f | %.2f | %.0f |", name, wall, spread, median(s.map(\.cpu)),
                               Double(s.map(\.maxRSS).max()!) / 1024, Double(baseBytes) / wall / 1e9, wall / cp, Double(s.map(\.extraDisk).max()!) / 1e6))
        }
        let machine = "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory / 1_073_741_824) GiB"
        let table = rows.joined(separator: "\n")
        print(table)
        if !markdown.isEmpty {
            let text = "\n### \(title)\n\nMachine: \(machine). Command: `\(command)`. Warm page cache, \(repeats) alternating repetitions.\n\n" + table + "\n"
            if let h = FileHandle(forWritingAtPath: markdown) {
                h.seekToEndOfFile()
                h.write(Data(text.utf8))
                h.closeFile()
            } else {
                _ = FileManager.default.createFile(atPath: markdown, contents: Data(text.utf8))
            }
        }
    }

    /// The image-model rows (`ImageWorkload`): cp -r and cp -r + sync of unet/, and the durable
    /// merge of the kohya LoRA into it, alternating `repeats` times.
    static func runImage(_ image: ImageWorkload, work: String, bin: String, repeats: Int, markdown: String) throws {
        let dir = work + "/" + image.name, out = dir + "/out"
        let t0 = Date()
        // In a child process, so that the measured children (copies of this one) start small.
        _ = try run([CommandLine.arguments[0], "--generate-only", "--size", image.name, "--work", work], quiet: false)
        let baseBytes = directorySize(dir + "/unet")
        print("workload \(image.name): unet \(String(format: "%.2f", Double(baseBytes) / 1e9)) GB (generated or reused in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s)")
        let commands: [(String, [String], String?)] = [
            ("cp -r", ["/bin/cp", "-r", dir + "/unet", out + "/cp"], out + "/cp"),
            ("cp -r + sync", ["/bin/sh", "-c", "cp -r '\(dir)/unet' '\(out)/cps' && sync -f '\(out)/cps'"], out + "/cps"),
            ("merge (kohya LoRA into unet/)", [bin, "merge", "--base", dir + "/unet", "--adapter", dir + "/lora.safetensors", "--output", out + "/merged", "--quiet"],
             out + "/merged"),
        ]
        _ = try run(["/bin/cat", dir + "/unet/diffusion_pytorch_model.safetensors", dir + "/lora.safetensors"], quiet: true)
        var samples: [String: [Sample]] = [:]
        for r in 0..<repeats {
            try? FileManager.default.removeItem(atPath: out)
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            for (name, argv, output) in commands {
                _ = try run(["/bin/sync"], quiet: true)
                samples[name, default: []].append(try run(argv, quiet: true, diskOf: out, output: output))
                if let output { try? FileManager.default.removeItem(atPath: output) }
            }
            print("repetition \(r + 1)/\(repeats) done")
        }
        try? FileManager.default.removeItem(atPath: out)
        report(rows: commands.map(\.0), samples: samples, baseBytes: baseBytes, markdown: markdown,
               title: "\(image.name): \(image.title), fp16, kohya LoRA r=32 on the attention and feed-forward linears, LoCon r=16 on the 3×3 convolutions",
               command: "scripts/bench --size \(image.name) --repeat \(repeats)", repeats: repeats)
    }

    /// Runs argv, returning wall time, user+sys CPU and peak RSS (KiB) of that child alone (wait4).
    /// With `diskOf`, also the peak extra disk use (bytes): the largest growth of the used space of
    /// that path's file system while the command ran (sampled every 50 ms, and once at its end),
    /// minus the space `output` occupies afterwards (nothing when nil).
    static func run(_ argv: [String], quiet: Bool, diskOf: String? = nil, output: String? = nil) throws -> Sample {
        var pid: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if quiet {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        let cargs = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        let sampler = diskOf.map { DiskSampler(path: $0) }
        sampler?.start()
        let start = Date()
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        guard rc == 0 else {
            _ = sampler?.stop()
            throw NSError(domain: "bench", code: Int(rc), userInfo: [NSLocalizedDescriptionKey: "cannot run \(argv[0])"])
        }
        var status: Int32 = 0
        var usage = rusage()
        _ = wait4(pid, &status, 0, &usage)
        let wall = Date().timeIntervalSince(start)
        let peakGrowth = sampler?.stop() ?? 0
        guard status == 0 else { throw NSError(domain: "bench", code: Int(status), userInfo: [NSLocalizedDescriptionKey: "\(argv.joined(separator: " ")) failed (\(status))"]) }
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let extra = sampler == nil ? 0 : max(0, peakGrowth - (output.map(allocatedSize) ?? 0))
        return Sample(wall: wall, cpu: cpu, maxRSS: usage.ru_maxrss, extraDisk: extra)
    }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Bytes allocated on disk to `path` (a file, or a directory with its files, recursively).
    static func allocatedSize(_ path: String) -> Int {
        var st = stat()
        guard lstat(path, &st) == 0 else { return 0 }
        var total = Int(st.st_blocks) * 512
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] { total += allocatedSize(path + "/" + name) }
        }
        return total
    }

    static func directorySize(_ dir: String) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).reduce(0) {
            $0 + ((try? FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? Int) ?? 0)
        }
    }
}

/// Samples the used space of one file system on a thread of its own while a command runs.
/// `@unchecked Sendable`: `peak` and `running` are only touched under `lock`; `path` is immutable.
final class DiskSampler: @unchecked Sendable {
    let path: String
    private let lock = NSLock()
    private var running = true
    private var baseline = 0
    private var peak = 0
    private let done = DispatchSemaphore(value: 0)

    init(path: String) { self.path = path }

    /// Used bytes of the file system: (blocks − free blocks) × fragment size. ext4 counts delayed
    /// allocations and fallocate'd space as used at once.
    func used() -> Int {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return 0 }
        return Int(s.f_blocks - s.f_bfree) * Int(s.f_frsize)
    }

    func start() {
        baseline = used()
        Thread.detachNewThread { [self] in
            while true {
                let u = used()
                lock.lock()
                peak = max(peak, u - baseline)
                let go = running
                lock.unlock()
                if !go { break }
                usleep(50_000)
            }
            done.signal()
        }
    }

    /// Stops sampling (after one last sample) and returns the largest growth over the baseline.
    func stop() -> Int {
        lock.lock()
        running = false
        lock.unlock()
        done.wait()
        lock.lock()
        defer { lock.unlock() }
        return peak
    }
}
