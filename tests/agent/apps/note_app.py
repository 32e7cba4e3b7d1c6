"""A tiny real app for user-task tests: a field; Enter writes its text to the file given as argv[1]."""

import sys

from PySide6.QtWidgets import QApplication, QLineEdit, QWidget

app = QApplication(sys.argv[:1] + ["-platform", "xcb"])
w = QWidget()
w.setWindowTitle("Squirrel note")
w.setGeometry(100, 100, 160, 210)
field = QLineEdit(w)
field.setGeometry(10, 10, 140, 24)


def save():
    with open(sys.argv[1], "w") as f:
        f.write(field.text())


field.returnPressed.connect(save)
w.show()
sys.exit(app.exec())
