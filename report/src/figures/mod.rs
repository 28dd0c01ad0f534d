//! The five figures: what each is called and shows, and drawing one into a PNG or SVG file.

mod accuracy;
mod confusion;
pub(crate) mod experiment;
mod loss;
mod probabilities;
mod roc;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::crisp_text::CrispText;
use crate::{ImageFormat, ReportInputs};

#[derive(Debug, Clone, Copy)]
pub(crate) enum Figure {
    Loss,
    Accuracy,
    Roc,
    Confusion,
    Probabilities,
}

/// Every figure, in the order the documents show them.
pub(crate) const FIGURES: [Figure; 5] = [
    Figure::Loss,
    Figure::Accuracy,
    Figure::Roc,
    Figure::Confusion,
    Figure::Probabilities,
];

impl Figure {
    pub fn stem(self) -> &'static str {
        match self {
            Figure::Loss => "loss",
            Figure::Accuracy => "val_accuracy",
            Figure::Roc => "roc_curve",
            Figure::Confusion => "confusion_matrix",
            Figure::Probabilities => "probability_histogram",
        }
    }

    pub fn file_name(self, format: ImageFormat) -> String {
        format!("{}.{}", self.stem(), format.extension())
    }

    pub fn title(self) -> &'static str {
        match self {
            Figure::Loss => "Training and validation loss",
            Figure::Accuracy => "Validation accuracy per epoch",
            Figure::Roc => "ROC curve (test split)",
            Figure::Confusion => "Confusion matrix (test split)",
            Figure::Probabilities => "Predicted probabilities by true class (test split)",
        }
    }

    /// What the figure shows, under it in the documents.
    pub fn caption(self) -> &'static str {
        match self {
            Figure::Loss => "Training loss at every logged step (thin line), its mean over each epoch, and the validation loss at the end of each epoch.",
            Figure::Accuracy => "Accuracy on the validation split at the end of each epoch.",
            Figure::Roc => "ROC curve of the test predictions; the dot marks the decision threshold used for the other metrics, the dashed diagonal a random classifier.",
            Figure::Confusion => "Test reviews by true and predicted class, with each count's share of its true class.",
            Figure::Probabilities => "Histogram (bins of 0.05) of the predicted probability of the positive class, separately for truly negative and truly positive reviews; the dashed line is the decision threshold.",
        }
    }

    fn size(self) -> (u32, u32) {
        match self {
            Figure::Roc | Figure::Confusion => (760, 700),
            _ => (1000, 600),
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        inputs: &ReportInputs,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let title = self.title();
        match self {
            Figure::Loss => loss::draw(root, title, &inputs.history),
            Figure::Accuracy => accuracy::draw(root, title, &inputs.history),
            Figure::Roc => roc::draw(root, title, &inputs.metrics),
            Figure::Confusion => confusion::draw(root, title, &inputs.metrics),
            Figure::Probabilities => probabilities::draw(root, title, inputs),
        }
    }

    /// Draws the figure in memory and writes it into `out_dir` atomically; returns its path.
    pub fn save(
        self,
        format: ImageFormat,
        inputs: &ReportInputs,
        out_dir: &Path,
    ) -> Result<PathBuf> {
        let path = out_dir.join(self.file_name(format));
        save(&(self, inputs), self.size(), format, &path)?;
        Ok(path)
    }
}

/// Something drawn into a figure file: a report figure, the experiment comparison.
pub(crate) trait Drawing {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

impl Drawing for (Figure, &ReportInputs) {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        self.0.draw(root, self.1)
    }
}

/// Draws `drawing` at `(w, h)` pixels in memory and writes it to `path` atomically.
pub(crate) fn save(
    drawing: &impl Drawing,
    (w, h): (u32, u32),
    format: ImageFormat,
    path: &Path,
) -> Result<()> {
    let encoded = match format {
        ImageFormat::Png => {
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root =
                    CrispText(BitMapBackend::with_buffer(&mut rgb, (w, h))).into_drawing_area();
                drawing.draw(&root)?;
                root.present()?;
            }
            png(&rgb, w, h)?
        }
        ImageFormat::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                drawing.draw(&root)?;
                root.present()?;
            }
            svg.into_bytes()
        }
    };
    pipeline::atomic::write_bytes(path, &encoded)
}

/// An RGB image as PNG, encoded as plotters' own file output encodes it.
fn png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w, h, image::ColorType::Rgb8)
        .context("encoding PNG")?;
    Ok(out)
}
