import Foundation
import Testing
@testable import SafeTensors

/// A fresh directory for one test, removed afterwards.
private func scratch() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("atomic-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func write(_ text: String, to path: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
}

private func read(_ path: String) -> String? {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}

private func listing(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
}

/// Writes a finished output directory with one file through AtomicOutput.
private func writeOutput(_ destination: String, force: Bool, text: String = "new") throws -> AtomicOutput {
    let output = try AtomicOutput(destination: destination, isDirectory: true, force: force)
    write(text, to: output.path(for: "model.safetensors"))
    return output
}

@Suite("Outputs never replace what lora-tool did not write")
struct AtomicOutputTests {
    @Test("Blank, '.', '..', '/', home and working-directory ancestors are refused before anything happens",
          arguments: ["", " ", "\t\n", ".", "..", "/", "./", "a/..", "a/.", "//"])
    func unsafePaths(path: String) throws {
        #expect(throws: SafeTensorsError.self) { try OutputPath.validate(path) }
        do { try OutputPath.validate(path) } catch let SafeTensorsError.unsafeOutput(_, detail) {
            #expect(!detail.isEmpty)
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test("The home directory and the working directory's ancestors are refused")
    func homeAndAncestors() throws {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        #expect(throws: SafeTensorsError.self) { try OutputPath.validate(home) }
        let cwd = FileManager.default.currentDirectoryPath
        #expect(throws: SafeTensorsError.self) { try OutputPath.validate(cwd) }
        #expect(throws: SafeTensorsError.self) { try OutputPath.validate((cwd as NSString).deletingLastPathComponent) }
        // A new directory inside the working directory is fine.
        try OutputPath.validate(cwd + "/some-new-output-\(UUID().uuidString)")
    }

    @Test("An existing directory is refused without --force, and kept intact")
    func existingWithoutForce() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        write("mine", to: out + "/model.safetensors")
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: out, isDirectory: true, force: false) }
        #expect(read(out + "/model.safetensors") == "mine")
        #expect(listing(dir) == ["out"])
    }

    @Test("--force refuses a directory holding what lora-tool did not write, and lists it", arguments: [
        ([".git"], "'.git'"),
        (["NOTES.md", "model.safetensors"], "'NOTES.md'"),
        (["main.swift", "Package.swift"], "'Package.swift', 'main.swift'"),
    ])
    func forceRefusesForeign(entries: [String], shown: String) throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/repo"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        for e in entries {
            if e == ".git" { try FileManager.default.createDirectory(atPath: out + "/.git", withIntermediateDirectories: false) } else { write(e, to: out + "/" + e) }
        }
        do {
            _ = try AtomicOutput(destination: out, isDirectory: true, force: true)
            Issue.record("replaced a directory holding \(entries)")
        } catch let SafeTensorsError.outputExists(_, detail) {
            #expect(detail.contains(shown), "\(detail)")
        }
        #expect(listing(out) == entries.sorted())
        #expect(listing(dir) == ["repo"])
    }

    @Test("--force replaces a marked output; the marker lists the files written")
    func forceReplacesMarked() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try writeOutput(out, force: false, text: "first").commit()
        #expect(listing(out) == [".lora-tool", "model.safetensors"])
        #expect(AtomicOutput.markerFiles(in: out) == ["model.safetensors"])
        let second = try writeOutput(out, force: true, text: "second")
        #expect(read(out + "/model.safetensors") == "first")  // untouched until commit
        try second.commit()
        #expect(read(out + "/model.safetensors") == "second")
        #expect(listing(dir) == ["out"])
    }

    @Test("A file added to a marked output after it was written makes --force refuse")
    func markedButModified() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try writeOutput(out, force: false).commit()
        write("user's", to: out + "/eval-results.txt")
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: out, isDirectory: true, force: true) }
        #expect(read(out + "/eval-results.txt") == "user's")
    }

    @Test("A file added between the start and the commit is not deleted: the new output is kept aside")
    func modifiedDuringRun() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try writeOutput(out, force: false, text: "first").commit()
        let second = try writeOutput(out, force: true, text: "second")
        write("user's", to: out + "/eval-results.txt")
        do {
            try second.commit()
            Issue.record("committed over a modified output")
        } catch let SafeTensorsError.outputAppeared(_, kept) {
            #expect(read(kept + "/model.safetensors") == "second")
        }
        #expect(read(out + "/eval-results.txt") == "user's")
        #expect(read(out + "/model.safetensors") == "first")
    }

    @Test("commitAll puts no part in place when one part's destination appeared meanwhile: that part is kept aside, the others are removed")
    func commitAllIsAllOrNothing() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let names = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
        var parts = try names.map { try AtomicOutput(destination: dir + "/" + $0, isDirectory: false, force: false) }
        for (part, name) in zip(parts, names) { write(name, to: part.staging) }
        write("user's", to: dir + "/" + names[1])
        do {
            try AtomicOutput.commitAll(parts)
            Issue.record("committed over a file that appeared")
        } catch let SafeTensorsError.outputAppeared(path, kept) {
            #expect(path == dir + "/" + names[1] && read(kept) == names[1])
        }
        parts = []
        #expect(listing(dir) == [names[1], names[1] + ".lora-tool-\(getpid())"])
        #expect(read(dir + "/" + names[1]) == "user's")
        // Nothing in the way: every part is committed.
        try FileManager.default.removeItem(atPath: dir + "/" + names[1])
        try FileManager.default.removeItem(atPath: dir + "/" + names[1] + ".lora-tool-\(getpid())")
        parts = try names.map { try AtomicOutput(destination: dir + "/" + $0, isDirectory: false, force: false) }
        for (part, name) in zip(parts, names) { write(name, to: part.staging) }
        try AtomicOutput.commitAll(parts)
        #expect(listing(dir) == names && names.allSatisfy { read(dir + "/" + $0) == $0 })
    }

    @Test("A directory that appears at the output while the command runs is never deleted")
    func appearsDuringRun() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        let output = try writeOutput(out, force: true)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        do {
            try output.commit()
            Issue.record("committed over a directory that appeared")
        } catch let SafeTensorsError.outputAppeared(path, kept) {
            #expect(path == out)
            #expect(kept == out + ".lora-tool-\(getpid())")
            #expect(read(kept + "/model.safetensors") == "new")
        }
        #expect(listing(out).isEmpty)
        #expect(!listing(dir).contains { $0.hasPrefix(".out.lora-tool-staging") })
    }

    @Test("An empty directory is an acceptable output without --force; one that gained files meanwhile is not")
    func emptyDirectory() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        try writeOutput(out, force: false).commit()
        #expect(read(out + "/model.safetensors") == "new")
        let other = dir + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: false)
        let output = try writeOutput(other, force: false)
        write("user's", to: other + "/notes")
        #expect(throws: SafeTensorsError.self) { try output.commit() }
        #expect(read(other + "/notes") == "user's")
    }

    @Test("A second writer of the same output refuses while the first holds its staging directory")
    func concurrentWriters() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        let first = try writeOutput(out, force: false, text: "first")
        do {
            _ = try AtomicOutput(destination: out, isDirectory: true, force: true)
            Issue.record("a second writer got the staging directory")
        } catch let SafeTensorsError.outputBusy(path, _) {
            #expect(path == out)
        }
        // The first writer's staging directory survived the attempt.
        #expect(read(first.path(for: "model.safetensors")) == "first")
        try first.commit()
        #expect(read(out + "/model.safetensors") == "first")
    }

    @Test("A killed run's staging directory (nobody holds it) is removed by the next run")
    func staleStaging() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let stale = dir + "/.out.lora-tool-staging"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: false)
        write("half", to: stale + "/model.safetensors")
        try writeOutput(dir + "/out", force: false).commit()
        #expect(listing(dir) == ["out"])
    }

    @Test("Another writer's new staging directory, not yet locked, is left alone while its process runs; a dead process's is removed")
    func unlockedFreshStaging() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A running process (this test's child) in the window between its mkdir and its flock.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["30"]
        try child.run()
        defer { child.terminate() }
        let running = dir + "/.out.lora-tool-new-\(child.processIdentifier)-1"
        try FileManager.default.createDirectory(atPath: running, withIntermediateDirectories: false)
        // A process that no longer exists (pid_max on Linux is at most 2^22).
        let dead = dir + "/.out.lora-tool-new-4194305-1"
        try FileManager.default.createDirectory(atPath: dead, withIntermediateDirectories: false)
        try writeOutput(dir + "/out", force: false).commit()
        #expect(FileManager.default.fileExists(atPath: running))
        #expect(!FileManager.default.fileExists(atPath: dead))
    }

    @Test("A staging-named directory holding a subdirectory is not lora-tool's and is left alone")
    func foreignStaging() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let stale = dir + "/.out.lora-tool-staging"
        try FileManager.default.createDirectory(atPath: stale + "/src", withIntermediateDirectories: true)
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: dir + "/out", isDirectory: true, force: false) }
        #expect(FileManager.default.fileExists(atPath: stale + "/src"))
    }

    @Test("The old output left by an interrupted two-rename replace is recovered, not deleted")
    func recoverOld() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out"
        try writeOutput(out, force: false, text: "old").commit()
        // The state a signal between the two renames would leave: the old output aside, no output.
        #expect(rename(out, dir + "/.out.lora-tool-old-12345") == 0)
        let output = try AtomicOutput(destination: dir + "/out", isDirectory: true, force: true)
        #expect(read(out + "/model.safetensors") == "old")
        #expect(output.notes.count == 1 && output.notes[0].contains("recovered"))
        output.abandon()
        #expect(listing(dir) == ["out"])
        // Without --force the recovered output is then refused like any existing one.
        #expect(rename(out, dir + "/.out.lora-tool-old-12345") == 0)
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: out, isDirectory: true, force: false) }
        #expect(read(out + "/model.safetensors") == "old")
    }

    @Test("Single-file outputs: --force replaces a safetensors file, never another kind of file or a link")
    func files() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = dir + "/a.safetensors"
        var output = try AtomicOutput(destination: target, isDirectory: false, force: false)
        write("\u{2}\0\0\0\0\0\0\0{}", to: output.staging)
        try output.commit()
        output = try AtomicOutput(destination: target, isDirectory: false, force: true)
        write("\u{2}\0\0\0\0\0\0\0{} ", to: output.staging)
        try output.commit()
        #expect(read(target)?.hasSuffix("{} ") == true)
        #expect(listing(dir) == ["a.safetensors"])
        write("print('hi')", to: dir + "/train.safetensors")
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: dir + "/train.safetensors", isDirectory: false, force: true) }
        #expect(symlink(target, dir + "/link.safetensors") == 0)
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: dir + "/link.safetensors", isDirectory: false, force: true) }
        #expect(throws: SafeTensorsError.self) { _ = try AtomicOutput(destination: dir, isDirectory: false, force: true) }
    }

    @Test("A staging directory removed by another program is reported as an output problem, not an input's")
    func vanishedStaging() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let output = try AtomicOutput(destination: dir + "/out", isDirectory: true, force: false)
        try FileManager.default.removeItem(atPath: output.stagingDirectory)
        do {
            _ = try ChunkedOutput(path: output.path(for: "model.safetensors"), tensors: [TensorInfo(name: "t", dtype: .float32, shape: [4])])
            Issue.record("created a file in a vanished directory")
        } catch let error as SafeTensorsError {
            guard case .outputIO = error else { Issue.record("\(error)"); return }
            #expect(error.localizedDescription.hasPrefix("output "))
            #expect(error.localizedDescription.contains("staging directory is gone"))
        }
    }

    @Test("Abandoning removes the staging directory and leaves the destination as it was")
    func abandon() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let output = try writeOutput(dir + "/out", force: false)
        output.abandon()
        #expect(listing(dir).isEmpty)
    }
}
