import ArgumentParser
import Foundation
import LoRACore

extension LoraTool {
    /// `lora-tool run`: replay a recipe, step by step, exactly as the equivalent command lines.
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a recipe: the steps of a job (merge, verify, convert, …) written as YAML or JSON.",
            discussion: """
                A recipe is a 'steps' list; each step maps one command to its options, named as on the \
                command line without '--' (true for a flag, a list for a repeated option, 'input' for \
                inspect's, convert's and resize's positional argument). Each step is validated and run \
                exactly as its command line would be, in order; the first failure stops the recipe. \
                'lora-tool merge ... --print-recipe' prints the recipe of a merge command line.
                """)

        @Argument(help: "Recipe file (YAML or JSON).")
        var recipe: String

        @Flag(help: "Print each step's command line instead of running it.")
        var dryRun = false

        func run() throws {
            let parsed = try Recipe(contentsOf: recipe)
            let commands = try parsed.steps.enumerated().map { index, step in
                do { return try RecipeArguments.arguments(for: step, step: index + 1) } catch let error as ValidationError {
                    throw ValidationError("\(recipe): \(error.message)")
                }
            }
            if dryRun {
                for argv in commands { print((["lora-tool"] + argv).map(RecipeArguments.shellQuoted).joined(separator: " ")) }
                return
            }
            for (index, argv) in commands.enumerated() {
                var command: ParsableCommand
                do { command = try LoraTool.parseAsRoot(argv) } catch {
                    throw ValidationError("\(recipe): step \(index + 1) (\(argv[0])): \(LoraTool.message(for: error))")
                }
                try command.run()
            }
        }
    }
}

/// Recipe steps as the command lines they stand for.
enum RecipeArguments {
    /// Commands a recipe may run, with the name of their positional argument's key.
    static let positional: [String: String] = ["inspect": "input", "convert": "input", "resize": "input"]

    /// The argument vector of `step` (command name first).
    /// - Throws: `ValidationError` naming the step and key when the command or an option is unknown.
    static func arguments(for step: Recipe.Step, step index: Int) throws -> [String] {
        let where_ = "step \(index) (\(step.command))"
        var help: String?
        var known: [String] = []
        for type in LoraTool.configuration.subcommands {
            let name = commandName(type)
            guard name != "run" else { continue }
            known.append(name)
            if name == step.command { help = helpText(type) }
        }
        guard let help else {
            throw ValidationError("\(where_): unknown command (recipes run \(known.joined(separator: ", ")))")
        }
        var argv = [step.command]
        for (key, value) in step.options {
            if key == positional[step.command] {
                guard case let .text(t) = value else { throw ValidationError("\(where_): '\(key)' must be one value") }
                argv.append(t)
                continue
            }
            // Checked against the command's own options, so a misspelled key is an error even as `false`.
            guard help.range(of: "--\(key)[ ,\\n]", options: .regularExpression) != nil || help.hasSuffix("--\(key)") else {
                throw ValidationError("\(where_): unknown option '\(key)'")
            }
            switch value {
            case let .text(t): argv += ["--\(key)", t]
            case let .flag(on): if on { argv.append("--\(key)") }
            case let .list(items): for item in items { argv += ["--\(key)", item] }
            }
        }
        return argv
    }

    private static func commandName<C: ParsableCommand>(_ type: C.Type) -> String { C._commandName }

    private static func helpText<C: ParsableCommand>(_ type: C.Type) -> String { LoraTool.helpMessage(for: C.self, columns: 10_000) }

    /// `s` quoted for a POSIX shell when it needs to be.
    static func shellQuoted(_ s: String) -> String {
        let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_./=:,@+%".unicodeScalars.contains($0) }
        return plain ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
