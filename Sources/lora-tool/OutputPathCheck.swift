import ArgumentParser
import SafeTensors

/// The usage check every writing subcommand runs on its output options in `validate()`: a blank,
/// `.`, `..`, `/`, home or working-directory-ancestor output is a usage error (exit 64), before
/// anything is read or written.
enum OutputPathCheck {
    static func validate(_ path: String?, option: String) throws {
        guard let path else { return }
        do { try OutputPath.validate(path) } catch let error as SafeTensorsError {
            throw ValidationError("\(option): \(Render.escaped(error.localizedDescription))")
        }
    }
}
