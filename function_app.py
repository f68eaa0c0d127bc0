"""The Azure Functions entry (Python v2 programming model): the app and its blueprints, nothing else."""

import azure.functions as func

from functions.alerts import bp as alerts_bp
from functions.api import bp as api_bp
from functions.ingest import bp as ingest_bp
from functions.predictions import bp as predictions_bp
from functions.schedule import bp as schedule_bp
from functions.ui import bp as ui_bp

app = func.FunctionApp()
app.register_functions(ingest_bp)
app.register_functions(predictions_bp)
app.register_functions(schedule_bp)
app.register_functions(alerts_bp)
app.register_functions(api_bp)
app.register_functions(ui_bp)
