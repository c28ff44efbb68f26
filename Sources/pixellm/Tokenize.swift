import ArgumentParser
import Foundation
import PixelText

/// `pixellm tokenize`: token ids of text (one JSON array per input line), or with --decode the text of
/// id arrays.
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print token ids (one JSON array per input line), or decode id arrays with --decode.")

    @Option(help: "Tokenizer directory (tokenizer.json or tokenizer.model, plus added_tokens.json, ...).")
    var tokenizer: String
    @Option(help: "Text to encode (or, with --decode, a JSON array of ids).") var text: String?
    @Option(help: "File whose lines are encoded (or decoded) one by one; '-' for standard input.") var file: String?
    @Flag(help: "Decode JSON arrays of ids into text.") var decode = false
    @Flag(help: "Do not add the BOS token.") var noBos = false
    @Flag(help: "Drop special tokens when decoding.") var skipSpecial = false
    @Option(help: "Added-token handling: reference (transformers 4.31, as PixelLM was trained) or hfFast.")
    var mode: String = "reference"

    func validate() throws {
        if (text == nil) == (file == nil) { throw ValidationError("give exactly one of --text and --file") }
        if Tokenizer.Mode(rawValue: mode) == nil {
            throw ValidationError("--mode must be one of \(Tokenizer.Mode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let tok = try Tokenizer(directory: tokenizer, mode: Tokenizer.Mode(rawValue: mode)!)
        var lines: [String]
        if let text {
            lines = [text]
        } else if file == "-" {
            lines = []
            while let l = readLine(strippingNewline: true) { lines.append(l) }
        } else {
            guard let data = FileManager.default.contents(atPath: file!), let s = String(data: data, encoding: .utf8) else {
                throw ValidationError("\(file!): cannot read the file as UTF-8 text")
            }
            lines = s.components(separatedBy: "\n")
            if lines.last == "" { lines.removeLast() }
        }
        for (n, line) in lines.enumerated() {
            if decode {
                guard let data = line.data(using: .utf8),
                      let ids = try? JSONSerialization.jsonObject(with: data) as? [Int] else {
                    throw ValidationError("\(file ?? "--text") line \(n + 1): not a JSON array of integers")
                }
                if let bad = ids.first(where: { $0 < 0 || $0 >= tok.vocabSize }) {
                    throw ValidationError("\(file ?? "--text") line \(n + 1): id \(bad) is outside the vocabulary (0..<\(tok.vocabSize), \(tokenizer))")
                }
                let out = tok.decode(ids, skipSpecial: skipSpecial)
                let json = try JSONSerialization.data(withJSONObject: [out], options: [.withoutEscapingSlashes])
                // print the decoded text as a JSON string so newlines and spaces stay visible
                print(String(String(data: json, encoding: .utf8)!.dropFirst().dropLast()))
            } else {
                print("[" + tok.encode(line, addBos: !noBos).map(String.init).joined(separator: ", ") + "]")
            }
        }
    }
}
