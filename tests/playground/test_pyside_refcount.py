"""Guard against the PySide6 6.12.0 bug that loses a reference to None on every void call: on
Python 3.11 the playground app and the panel abort ("deallocating None") after ~2,000 repaints."""

import subprocess
import sys

CODE = """
import sys
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication(["x", "-platform", "offscreen"])
class W(QWidget):
    def paintEvent(self, e):
        pass
w = W(); w.show()
for _ in range(100):
    app.processEvents(); QGuiApplication.sync(); w.repaint()
a = sys.getrefcount(None)
for _ in range(3000):
    app.processEvents(); QGuiApplication.sync(); w.repaint()
print(sys.getrefcount(None) - a)
"""


def test_qt_calls_do_not_leak_references_to_none():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert abs(int(r.stdout.strip().splitlines()[-1])) < 100
