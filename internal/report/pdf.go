package report

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/go-pdf/fpdf"
)

// doc writes a plain A4 report with the core fonts (text outside Windows-1252 is
// transliterated where possible, else replaced).
type doc struct {
	f  *fpdf.Fpdf
	tr func(string) string
}

func newDoc(title string, at time.Time) *doc {
	f := fpdf.New("P", "mm", "A4", "")
	f.SetCreationDate(at)
	f.SetModificationDate(at)
	f.SetTitle(strings.ToValidUTF8(title, "?"), true) // the title metadata is UTF-16; invalid UTF-8 panics fpdf
	f.SetCreator("strongroom", true)
	f.SetMargins(15, 15, 15)
	f.SetAutoPageBreak(true, 15)
	d := &doc{f: f, tr: f.UnicodeTranslatorFromDescriptor("")}
	f.SetFooterFunc(func() {
		f.SetY(-12)
		f.SetFont("Helvetica", "", 8)
		f.CellFormat(0, 5, d.tr(fmt.Sprintf("%s — page %d", title, f.PageNo())), "", 0, "C", false, 0, "")
	})
	f.AddPage()
	f.SetFont("Helvetica", "B", 16)
	f.MultiCell(0, 8, d.tr(title), "", "L", false)
	f.Ln(2)
	return d
}

func (d *doc) heading(s string) {
	d.f.Ln(3)
	d.f.SetFont("Helvetica", "B", 12)
	d.f.MultiCell(0, 6, d.tr(s), "B", "L", false)
	d.f.Ln(1)
}

func (d *doc) para(s string) {
	d.f.SetFont("Helvetica", "", 9)
	d.f.MultiCell(0, 4.5, d.tr(s), "", "L", false)
}

func (d *doc) mono(s string) {
	d.f.SetFont("Courier", "", 7)
	d.f.MultiCell(0, 3.2, d.tr(s), "", "L", false)
}

// fields prints label: value lines.
func (d *doc) fields(kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		d.f.SetFont("Helvetica", "B", 9)
		d.f.CellFormat(45, 4.5, d.tr(kv[i]), "", 0, "L", false, 0, "")
		d.f.SetFont("Helvetica", "", 9)
		d.f.MultiCell(0, 4.5, d.tr(kv[i+1]), "", "L", false)
	}
}

// table prints rows under a header; widths are in mm and cells wrap to their width.
func (d *doc) table(widths []float64, header []string, rows [][]string) {
	if len(rows) == 0 {
		d.para("(none)")
		return
	}
	d.row(widths, header, true)
	for _, r := range rows {
		d.row(widths, r, false)
	}
}

func (d *doc) row(widths []float64, cells []string, head bool) {
	style, lh := "", 4.0
	if head {
		style = "B"
	}
	d.f.SetFont("Helvetica", style, 8)
	lines := make([][]string, len(cells))
	n := 1
	for i, c := range cells {
		lines[i] = d.f.SplitText(bytesAsRunes(d.tr(c)), widths[i]-1)
		n = max(n, len(lines[i]))
	}
	h := float64(n) * lh
	if _, y := d.f.GetXY(); y+h > 282 {
		d.f.AddPage()
	}
	x, y := d.f.GetXY()
	for i := range cells {
		d.f.Rect(x, y, widths[i], h, "D")
		for j, l := range lines[i] {
			d.f.SetXY(x+0.5, y+float64(j)*lh)
			d.f.CellFormat(widths[i]-1, lh, runesAsBytes(l), "", 0, "L", false, 0, "")
		}
		x += widths[i]
	}
	d.f.SetXY(15, y+h)
}

func (d *doc) write(w io.Writer) error {
	if err := d.f.Error(); err != nil {
		return err
	}
	return d.f.Output(w)
}

// bytesAsRunes reads a Windows-1252 string as runes below 256: SplitText indexes its width
// table by rune (and panics beyond 255), while the core fonts' text is bytes.
func bytesAsRunes(b string) string {
	r := make([]rune, len(b))
	for i := 0; i < len(b); i++ {
		r[i] = rune(b[i])
	}
	return string(r)
}

// runesAsBytes undoes bytesAsRunes.
func runesAsBytes(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		b = append(b, byte(r))
	}
	return string(b)
}
