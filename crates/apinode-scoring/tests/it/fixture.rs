//! Small hand-written model folders for error and behaviour tests.

use std::io::Write;
use std::path::Path;

/// A model folder in a temporary directory.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) const LOGISTIC: &str = r#"{"policy": "MULTINOMIAL",
    "coefficients": [[0, 0, 0, 0], [0.5, 1.0, -1.0, 0.25]], "intercept": [0, -0.2]}"#;

impl Fixture {
    /// A binary logistic model over `num1` (imputed, rescaled), `cat1` (dummies with N/A and
    /// others) and `day` (a dateonly column, read as a number).
    pub(crate) fn binary() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write(
            "dss_pipeline_meta.json",
            r#"{"type": "BINARY_PROBABILISTIC", "algorithm_name": "LOGISTIC",
                "columns": ["num1", "dummy:cat1:a", "dummy:cat1:__Others__", "day"],
                "classes": ["no", "yes"]}"#,
        );
        f.write_gz(LOGISTIC);
        f.write(
            "rpreprocessing_params.json",
            r#"{"per_feature": {"num1": {"role": "INPUT", "type": "NUMERIC"},
                "cat1": {"role": "INPUT", "type": "CATEGORY"},
                "day": {"role": "INPUT", "type": "NUMERIC"},
                "y": {"role": "TARGET", "type": "CATEGORY"}}}"#,
        );
        f.write(
            "split/split.json",
            r#"{"schema": {"columns": [{"name": "num1", "type": "double"},
                {"name": "cat1", "type": "string"}, {"name": "y", "type": "string"},
                {"name": "day", "type": "dateonly"}]}}"#,
        );
        f.write("rmodeling_params.json", "{}");
        f.write("user_meta.json", r#"{"activeClassifierThreshold": 0.3}"#);
        f.write(
            "imputed.json",
            r#"{"num_columns": ["num1"], "num_values": [2.0], "cat_columns": [], "cat_values": []}"#,
        );
        f.write(
            "rescalers.json",
            r#"{"columns": ["num1", "day"], "shifts": [1.0, 3.7e9], "inv_scales": [0.5, 1e-8]}"#,
        );
        f.write(
            "dummies.json",
            r#"{"details": {"cat1": {"levels": ["a", "b"], "with_others": true}}}"#,
        );
        f
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, name: &str, content: &str) {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub(crate) fn write_gz(&self, json: &str) {
        let file = std::fs::File::create(self.dir.path().join("dss_pipeline_model.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        gz.write_all(json.as_bytes()).unwrap();
        gz.finish().unwrap();
    }

    pub(crate) fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).unwrap();
    }

    /// The folder zipped, as a `model.zip` at `dest`.
    pub(crate) fn zip_to(&self, dest: &Path) {
        let file = std::fs::File::create(dest).unwrap();
        let mut z = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for entry in walk(self.dir.path()) {
            let rel = entry.strip_prefix(self.dir.path()).unwrap();
            z.start_file(rel.to_string_lossy(), opts).unwrap();
            z.write_all(&std::fs::read(&entry).unwrap()).unwrap();
        }
        z.finish().unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
