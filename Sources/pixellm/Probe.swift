import ArgumentParser
import Foundation
import PixelData
import PixelModel
import PixelTensor
import PixelTrain

/// `pixellm probe`: what a model's vision side states linearly about the objects of a MUSE-layout split.
struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Linear probes of the vision features: how well CLIP's deep / mid features and the LLM image tokens at each object state the words of its name (size, colour, shape in the synthetic set).",
        discussion: """
        For every object of the first --images images of muse_<split>.json (each annotation once per image), the \
        features under the centroid of its mask: CLIP's deep and mid hidden states at that patch-grid cell, and the \
        LLM image token (mm_projector output) of the pooled cell. Per word position of the names (those with the \
        most common word count), a ridge classifier per feature kind on standardised features; images with index \
        % 5 == 3 choose the ridge, == 4 are held out. Reported: held-out accuracy beside chance (the most frequent \
        class). Seconds, not a training run: it says whether the vision tower sees an attribute before the language \
        model is asked to read it.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(name: both("dataset-dir"), help: "The dataset tree (the reference's layout; muse_<split>.json at its top).")
    var datasetDir: String
    @Option(help: "MUSE split: train, val, test_less or test_many.") var split = "train"
    @Option(help: "Images to read (the first N of the split).") var images = 1000
    @Option(help: "Write the figures as JSON here.") var out: String?

    func validate() throws {
        guard MUSEReader.splits.contains(split) else {
            throw ValidationError("--split \(split): not a MUSE split (\(MUSEReader.splits.joined(separator: ", ")))")
        }
        guard images >= 5 else { throw ValidationError("--images \(images): at least 5 (one held-out image in five)") }
    }

    struct ProbeError: Error, CustomStringConvertible { var description: String }

    struct Report: Encodable {
        struct Figure: Encodable { var feature: String; var accuracy: Double?; var chance: Double?; var lambda: Double? }
        struct Word: Encodable { var position: Int; var classes: [String]; var figures: [Figure] }
        var model: String
        var split: String
        var images: Int
        var objects: Int
        var trainObjects: Int
        var testObjects: Int
        var skipped: [String]
        var words: [Word]
    }

    func run() throws {
        let (_, model, what, _) = try modelOptions.loadModelOrCheckpoint()
        let reader = try MUSEReader(datasetDir: datasetDir, split: split)
        let t0 = Date()
        let (objects, skipped) = try ObjectProbe.collect(model: model, reader: reader, images: images) { done, total in
            if done % 50 == 0 { FileHandle.standardError.write(Data("\rprobe: features of image \(done + 1)/\(total)".utf8)) }
        }
        FileHandle.standardError.write(Data("\n".utf8))
        let (words, used, reports) = ObjectProbe.probe(objects)
        guard !reports.isEmpty, let anyResult = reports.flatMap({ $0.results }).compactMap({ $0 }).first else {
            throw ProbeError(description: "\(reader.indexFile): too few objects to probe (\(objects.count) objects in \(min(images, reader.count)) images; every fifth image is held out, every fifth chooses the ridge)")
        }
        let n = min(images, reader.count)
        print("probe: \(what.joined(separator: "; "))")
        print("probe: \(reader.indexFile), \(n) images, \(objects.count) objects (\(used) with \(words)-word names: \(anyResult.trainRows) fit, \(anyResult.testRows) held out), \(skipped.count) images skipped, "
              + String(format: "%.1f s", Date().timeIntervalSince(t0)))
        let width = 18
        func pad(_ s: String) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
        print(pad("") + reports.map { pad("word \($0.position) (\($0.classes.count))") }.joined())
        print(pad("chance") + reports.map { pad($0.results.compactMap { $0 }.first.map { String(format: "%.2f", $0.chance) } ?? "-") }.joined())
        for (k, kind) in ObjectProbe.kinds.enumerated() {
            print(pad(kind) + reports.map { pad($0.results[k].map { String(format: "%.2f", $0.accuracy) } ?? "-") }.joined())
        }
        for r in reports {
            print("word \(r.position): " + r.classes.prefix(12).joined(separator: ", ") + (r.classes.count > 12 ? ", ..." : ""))
        }
        if let out {
            let report = Report(model: what.joined(separator: "; "), split: split, images: n, objects: objects.count,
                                trainObjects: anyResult.trainRows, testObjects: anyResult.testRows, skipped: skipped,
                                words: reports.map { r in
                                    Report.Word(position: r.position, classes: r.classes, figures: ObjectProbe.kinds.indices.map { k in
                                        Report.Figure(feature: ObjectProbe.kinds[k], accuracy: r.results[k]?.accuracy,
                                                      chance: r.results[k]?.chance, lambda: r.results[k]?.lambda)
                                    })
                                })
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try AtomicFile.write([UInt8](try enc.encode(report)), to: out)
            print("probe: report \(out)")
        }
    }
}
